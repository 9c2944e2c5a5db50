"""CLI glue: the API client subcommands and the --api/--publish options (started by app/)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from pyvpnkit.api.client import ApiClient, ApiError

log = logging.getLogger("pyvpnkit")

API_ENV = "PYVPNKIT_API"
CLIENT_COMMANDS = ("expose", "unexpose", "forwards", "stats", "leases")


def _publish(text: str) -> tuple[str, str, str]:
    from pyvpnkit.core.forwards import parse_publish

    try:
        return parse_publish(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _api_url(text: str) -> str:
    if not text.startswith(("unix://", "tcp://")):
        raise argparse.ArgumentTypeError(f"bad API address {text!r}: use unix:///PATH or tcp://HOST:PORT")
    return text


def add_service_options(parser: argparse.ArgumentParser) -> None:
    """--api and -p/--publish for `exec` and `run`."""
    g = parser.add_argument_group("port forwarding")
    g.add_argument(
        "--api",
        type=_api_url,
        metavar="URL",
        help="serve the gvisor-tap-vsock compatible control API on unix:///PATH (mode 0600) "
        "or tcp://127.0.0.1:PORT (no authentication)",
    )
    g.add_argument(
        "-p",
        "--publish",
        type=_publish,
        action="append",
        default=[],
        metavar="[HOST_IP:]HOST_PORT:VM_PORT[/udp]",
        help="forward a host port to the first VM (repeatable); HOST_IP defaults to 127.0.0.1, "
        "not Docker's 0.0.0.0, so nothing is exposed beyond this machine unless asked",
    )
    g.add_argument(
        "--no-forward-source",
        action="store_true",
        help="connections forwarded into a VM come from the gateway, not from the client's "
        "own address (a loopback client shows as the host alias) as by default",
    )


def _add_api_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api",
        type=_api_url,
        default=os.environ.get(API_ENV),
        metavar="URL",
        help=f"API address, unix:///PATH or tcp://HOST:PORT (default: ${API_ENV})",
    )


def add_subcommands(subparsers: Any) -> None:
    """expose / unexpose / forwards / stats / leases: clients of a running service's API."""
    p = subparsers.add_parser("expose", help="forward a host port or unix socket into a VM")
    _add_api_option(p)
    p.add_argument("local", help="host side: IP:PORT ([V6]:PORT), or a path for --protocol unix")
    p.add_argument("remote", help="VM side: IP:PORT (:PORT means the first VM)")
    p.add_argument("--protocol", choices=["tcp", "udp", "unix"], default="tcp",
                   help="tcp or udp port, or unix: a host socket path to a VM TCP port "
                   "(default %(default)s)")

    p = subparsers.add_parser("unexpose", help="stop a forward")
    _add_api_option(p)
    p.add_argument("local", help="the host side as given to expose")
    p.add_argument("--protocol", choices=["tcp", "udp", "unix"], default="tcp",
                   help="the protocol given to expose (default %(default)s)")

    p = subparsers.add_parser("forwards", help="list the forwards")
    _add_api_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = subparsers.add_parser("stats", help="print traffic counters, drops and flows as JSON")
    _add_api_option(p)

    p = subparsers.add_parser("leases", help="print the VM addresses and MACs as JSON")
    _add_api_option(p)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run one of our subcommands; None when ``args.command`` is not ours."""
    if args.command not in CLIENT_COMMANDS:
        return None
    if not args.api:
        msg = f"pyvpnkit {args.command}: --api URL is required (or set ${API_ENV})"
        print(msg, file=sys.stderr)
        return 2
    try:
        client = ApiClient(args.api)
        if args.command == "expose":
            info = client.expose(args.local, args.remote, args.protocol)
            print(f"{info['protocol']} {info['local']} -> {info['remote']}")
        elif args.command == "unexpose":
            client.unexpose(args.local, args.protocol)
        elif args.command == "forwards":
            items = client.forwards()
            if args.json:
                print(json.dumps(items, indent=2))
            else:
                for f in items:
                    print(f"{f['protocol']:<5} {f['local']:<24} -> {f['remote']}")
        elif args.command == "stats":
            print(json.dumps(client.stats(), indent=2, sort_keys=True))
        else:
            print(json.dumps(client.leases(), indent=2))
    except (ApiError, ValueError) as exc:
        print(f"pyvpnkit {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "add_service_options",
    "add_subcommands",
    "dispatch",
]
