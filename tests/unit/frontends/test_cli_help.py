"""`--help` documents every option of every subcommand."""

from __future__ import annotations

import argparse

from pyvpnkit.frontends.cli import make_parser


def test_every_option_has_help_text() -> None:
    parser = make_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, command in sub.choices.items()
        for action in command._actions
        if not action.help
    ]
    assert missing == []
    run_help = sub.choices["run"].format_help()
    assert "tcp://127.0.0.1:PORT" in run_help.split("--listen-vpnkit")[1]
    exec_help = " ".join(sub.choices["exec"].format_help().split())
    assert "576 to 65520" in exec_help
    assert "reloaded when it changes" in exec_help and "default /etc/hosts" in exec_help
    assert "125 when pyvpnkit could not set up" in exec_help
