"""--http, --http-proxy, --https-proxy, --no-proxy, --proxy-from-env: what they add up to."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvpnkit.app.options import load_proxy_config
from pyvpnkit.core.http_proxy.config import ProxyConfig
from pyvpnkit.errors import SETUP_FAILED, USAGE, UserError
from pyvpnkit.frontends.cli import main, make_parser, service_options


def config(*argv: str) -> ProxyConfig:
    return load_proxy_config(service_options(make_parser().parse_args(["run", "--tap", "t0",
                                                                      *argv])))


def test_flags_without_a_file() -> None:
    cfg = config("--http-proxy", "p:1", "--no-proxy", "a.test,10.0.0.0/8")
    assert cfg.http is not None and (cfg.http.host, cfg.http.port) == ("p", 1)
    assert cfg.https is None and cfg.excluded("x.a.test") and cfg.excluded("10.1.1.1")


def test_environment_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://envproxy:3128")
    monkeypatch.setenv("HTTPS_PROXY", "envproxy:3129")
    monkeypatch.setenv("no_proxy", "internal.test")
    assert config().http is None
    cfg = config("--proxy-from-env", "--http-proxy", "flag:1")
    assert cfg.http is not None and cfg.http.host == "flag"  # the flag wins
    assert cfg.https is not None and cfg.https.port == 3129
    assert cfg.excluded("internal.test")
    monkeypatch.setenv("http_proxy", "ftp://x:1")
    with pytest.raises(UserError, match="--proxy-from-env: http_proxy: 'ftp://x:1': only"):
        config("--proxy-from-env")


def test_the_file_and_the_flags_over_it(tmp_path: Path) -> None:
    path = tmp_path / "http_proxy.json"
    path.write_text('{"http": "file:1", "https": "file:2", "exclude": "f.test"}')
    cfg = config("--http", str(path), "--https-proxy", "flag:3")
    assert cfg.http is not None and cfg.http.host == "file"
    assert cfg.https is not None and cfg.https.host == "flag" and cfg.excluded("f.test")


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        (None, SETUP_FAILED, "No such file or directory"),
        ('{"http": "nope"}', USAGE, "http: 'nope' is not host:port"),
    ],
)
def test_bad_file_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, code: int,
    message: str,
) -> None:
    path = tmp_path / "http_proxy.json"
    if text is not None:
        path.write_text(text)
    assert main(["run", "--tap", "t0", "--http", str(path)]) == code
    err = capsys.readouterr().err
    assert err == f"pyvpnkit: --http {path}: {message}" + err.split(message, 1)[1]
    assert err.count("\n") == 1


def test_bad_flag_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        make_parser().parse_args(["run", "--http-proxy", "https://p:1"])
    assert exit_.value.code == USAGE
    assert "--http-proxy: 'https://p:1': only http:// proxies" in capsys.readouterr().err


def test_vpnkit_http_flag_maps_to_ours(tmp_path: Path) -> None:
    from pyvpnkit.frontends import vpnkit as vpnkit_cli
    path = tmp_path / "http_proxy.json"
    path.write_text('{"http": "proxy:3128"}')
    _config, options, _level = vpnkit_cli.configure(["--ethernet", "/tmp/e.sock",
                                                     "--http", str(path)])
    assert options.http == str(path)
    assert load_proxy_config(options).http is not None
    path.write_text('{"http": "proxy"}')
    with pytest.raises(vpnkit_cli.UsageError, match=r"--http .*: http: 'proxy' is not host:port"):
        vpnkit_cli.configure(["--ethernet", "/tmp/e.sock", "--http", str(path)])
