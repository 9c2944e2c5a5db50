"""Port forwarding into the VM namespace: -p, the control API and its CLI, end to end.

Servers run inside the VM namespace behind pyvpnkit; clients run in the
test-made host namespace on its loopback. The API is a unix socket file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from pyvpnkit.api.client import ApiClient
from tests.integration.netenv import NetEnv, exec_args, wait_for

# Echo servers in the VM namespace; the shell stops them all when pyvpnkit ends it.
VM_SERVERS = (
    "socat UDP-LISTEN:8081,fork,reuseaddr EXEC:cat & a=$!; "
    "socat TCP-LISTEN:8082,fork,reuseaddr EXEC:cat & b=$!; "
    "socat TCP-LISTEN:8080,fork,reuseaddr EXEC:cat & c=$!; "
    "trap 'kill $a $b $c; exit 0' TERM INT; wait"
)

# Sends N bytes, half-closes, reads the echo to EOF: checks relay and half-close.
BULK = textwrap.dedent(
    """
    import hashlib, os, socket, sys
    data = os.urandom(int(sys.argv[2]))
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := s.recv(65536):
        got += chunk
    print("ok" if bytes(got) == data else f"mismatch {len(got)} != {len(data)}")
    """
)


def cli(netenv: NetEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return netenv.run_in("host", sys.executable, "-m", "pyvpnkit", *args, check=False, timeout=20)


def echo(netenv: NetEnv, address: str, text: str) -> subprocess.CompletedProcess[str]:
    return netenv.run_in(
        "host", "socat", "-t2", "-T3", "-", address, input=text, check=False, timeout=10
    )


def test_publish_expose_unexpose_and_bad_requests(netenv: NetEnv, tmp_path: Path) -> None:
    api_path = tmp_path / "api.sock"
    api = f"unix://{api_path}"
    log = tmp_path / "pyvpnkit.log"
    proc = subprocess.Popen(
        netenv.pyvpnkit(
            "exec", *exec_args(), "--api", api, "-p", "127.0.0.1:18080:8080",
            "--", "sh", "-c", VM_SERVERS,
        ),
        start_new_session=True,
        stderr=log.open("wb"),
    )
    netenv.procs.append(proc)
    assert wait_for(api_path.exists, timeout=10), "API socket never appeared"
    assert (api_path.stat().st_mode & 0o777) == 0o600

    # -p: the published TCP port echoes through the VM's server.
    assert wait_for(lambda: echo(netenv, "TCP:127.0.0.1:18080", "hello\n").stdout == "hello\n",
                    timeout=10)
    bulk = netenv.run_in("host", sys.executable, "-c", BULK, "18080", str(2 << 20), timeout=30)
    assert bulk.stdout.strip() == "ok", bulk.stdout + bulk.stderr

    # UDP through the API's CLI.
    res = cli(netenv, "expose", "--api", api, "--protocol", "udp", "127.0.0.1:18081", ":8081")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "udp 127.0.0.1:18081 -> 192.168.65.3:8081"
    assert wait_for(lambda: echo(netenv, "UDP:127.0.0.1:18081", "udp-hi\n").stdout == "udp-hi\n",
                    timeout=10)
    again = cli(netenv, "expose", "--api", api, "--protocol", "udp", "127.0.0.1:18081", ":8081")
    assert again.returncode == 1 and "already exposed" in again.stderr

    # A unix socket on the host forwarded to a TCP port in the VM.
    unix_path = tmp_path / "fwd.sock"
    res = cli(netenv, "expose", "--api", api, "--protocol", "unix", str(unix_path),
              "192.168.65.3:8082")
    assert res.returncode == 0, res.stderr
    assert echo(netenv, f"UNIX-CONNECT:{unix_path}", "via unix\n").stdout == "via unix\n"

    listed = cli(netenv, "forwards", "--api", api)
    assert listed.returncode == 0
    lines = sorted(" ".join(line.split()) for line in listed.stdout.splitlines())
    assert lines == sorted([
        "tcp 127.0.0.1:18080 -> 192.168.65.3:8080",
        "udp 127.0.0.1:18081 -> 192.168.65.3:8081",
        f"unix {unix_path} -> 192.168.65.3:8082",
    ])

    # Bad requests are refused with a reason; the service keeps serving.
    client = ApiClient(api)
    status, body = client.request("POST", "/services/forwarder/expose", None)
    assert status == 400 and b"malformed JSON" in body
    status, body = client.request("POST", "/services/forwarder/expose", {"local": "x"})
    assert status == 400 and b'"remote" is required' in body
    assert client.request("GET", "/services/forwarder/all")[0] == 200
    assert client.request("DELETE", "/services/forwarder/all")[0] == 405
    assert client.request("GET", "/nowhere")[0] == 404
    assert echo(netenv, "TCP:127.0.0.1:18080", "still\n").stdout == "still\n"

    # Unexpose: the port and the socket file go away.
    res = cli(netenv, "unexpose", "--api", api, "127.0.0.1:18080")
    assert res.returncode == 0, res.stderr
    refused = echo(netenv, "TCP:127.0.0.1:18080", "x\n")
    assert refused.returncode != 0 and "refused" in refused.stderr.lower()
    res = cli(netenv, "unexpose", "--api", api, "--protocol", "unix", str(unix_path))
    assert res.returncode == 0, res.stderr
    assert not unix_path.exists()

    stats = client.stats()
    assert stats["machines"]["udp_forward"]["to_vm"] >= 1
    assert stats["machines"]["udp_forward"]["to_host"] >= 1
    assert stats["bytes_out"] > 2 << 20 and stats["bytes_in"] > 2 << 20
    assert list(client.leases()) == ["192.168.65.3"]

    # Stopping the service removes the API socket.
    proc.terminate()
    proc.wait(10)
    try:  # anything the VM command left behind shares pyvpnkit's process group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert wait_for(lambda: not api_path.exists(), timeout=3)
    assert "Traceback" not in log.read_text()
