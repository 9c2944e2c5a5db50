"""CLI glue: the API client subcommands and the --api/--publish options (started by app/)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyvpnkit.core.conditions import DEFAULT_QUEUE_BYTES

if TYPE_CHECKING:  # imported where used: http.client is 8 ms of every start (exec's too)
    from pyvpnkit.api.client import ApiClient

log = logging.getLogger("pyvpnkit")

API_ENV = "PYVPNKIT_API"
CLIENT_COMMANDS = ("expose", "unexpose", "forwards", "stats", "leases", "conditions")


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _metrics_listen(text: str) -> str:
    """[HOST:]PORT as tcp://HOST:PORT; a bare port listens on 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"bad address {text!r}: expected [HOST:]PORT")
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


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
    c = parser.add_argument_group("network conditions and metrics")
    c.add_argument("--conditions", metavar="FILE",
                   help="rules as a JSON list (see `pyvpnkit conditions`); reloaded on change")
    c.add_argument("--conditions-queue-bytes", type=_positive_int, default=DEFAULT_QUEUE_BYTES,
                   metavar="N", help="bytes the delay queue may hold; beyond, frames are "
                   "dropped and counted (default %(default)s)")
    c.add_argument("--metrics-listen", type=_metrics_listen, metavar="[HOST:]PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics "
                   "(HOST defaults to 127.0.0.1)")
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
    _add_conditions_parser(subparsers)


def _unit(units: dict[str, float], default: str, what: str) -> Callable[[str], float]:
    """A parser of NUMBER[UNIT] into the API's unit (``units`` maps suffix -> factor)."""

    def parse(text: str) -> float:
        low = text.strip().lower()
        for suffix in sorted(units, key=len, reverse=True):
            if suffix and low.endswith(suffix):
                number, factor = low[: -len(suffix)], units[suffix]
                break
        else:
            number, factor = low, units[default]
        try:
            value = float(number) * factor
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}: negative")
        return value

    return parse


_MS = _unit({"ms": 1.0, "s": 1000.0, "us": 0.001}, "ms", "duration")
_FRACTION = _unit({"%": 0.01, "": 1.0}, "", "fraction")
_KBIT = _unit({"kbit": 1.0, "mbit": 1000.0, "gbit": 1e6, "bit": 0.001}, "kbit", "rate")


def _add_conditions_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "conditions", help="network conditions and egress rules: add, list, remove, clear")
    sub = p.add_subparsers(dest="conditions_action", required=True, metavar="ACTION",
                           help="add, list, remove or clear")
    add = sub.add_parser("add", help="append a rule (the first matching rule wins)")
    _add_api_option(add)
    add.add_argument("--vm", help="the VM's address or MAC (default: every VM)")
    add.add_argument("--to", help="destination CIDR, address or DNS name")
    add.add_argument("--port", type=int, help="destination port")
    add.add_argument("--proto", choices=["tcp", "udp", "icmp", "any"], default="any")
    act = add.add_mutually_exclusive_group()
    act.add_argument("--allow", dest="action", action="store_const", const="allow")
    act.add_argument("--reject", dest="action", action="store_const", const="reject",
                     help="refuse at once (RST, ICMP unreachable)")
    act.add_argument("--drop", dest="action", action="store_const", const="drop",
                     help="silence, both ways: a partition")
    add.add_argument("--delay", type=_MS, help="added delay, e.g. 100ms or 1s")
    add.add_argument("--jitter", type=_MS, help="random +/- on the delay, e.g. 10ms")
    add.add_argument("--loss", type=_FRACTION, help="fraction of frames lost, e.g. 5%% or 0.05")
    add.add_argument("--duplicate", type=_FRACTION, help="fraction of frames sent twice")
    add.add_argument("--rate", type=_KBIT, help="rate limit per direction, e.g. 1mbit, 800kbit")
    add.add_argument("--direction", choices=["both", "out", "in"],
                     help="impair frames from the VM (out), to it (in) or both (default)")
    ls = sub.add_parser("list", help="print the rules and their counters")
    _add_api_option(ls)
    ls.add_argument("--json", action="store_true", help="print JSON")
    rm = sub.add_parser("remove", help="remove a rule by id")
    _add_api_option(rm)
    rm.add_argument("id", type=int)
    clear = sub.add_parser("clear", help="remove every rule")
    _add_api_option(clear)


def _rule_of(args: argparse.Namespace) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    for flag, key in (("vm", "vm"), ("to", "to"), ("port", "port"), ("delay", "delay_ms"),
                      ("jitter", "jitter_ms"), ("loss", "loss"), ("duplicate", "duplicate"),
                      ("rate", "rate_kbit"), ("direction", "direction")):
        value = getattr(args, flag)
        if value is not None:
            rule[key] = value
    if args.proto != "any":
        rule["proto"] = args.proto
    if args.action is not None:
        rule["action"] = args.action
    return rule


def _describe(rule: dict[str, Any]) -> str:
    keys = ("vm", "to", "port", "proto", "delay_ms", "jitter_ms", "loss", "duplicate",
            "rate_kbit", "direction")
    fields = " ".join(f"{k}={rule[k]}" for k in keys if k in rule and rule[k] != "any")
    stats = rule.get("stats", {})
    counts = " ".join(f"{k}={v}" for k, v in stats.items() if v)
    return f"{rule['id']:>3} {rule['action']:<7} {fields}" + (f"  [{counts}]" if counts else "")


def _conditions(client: ApiClient, args: argparse.Namespace) -> None:
    action = args.conditions_action
    if action == "add":
        print(_describe(client.add_condition(_rule_of(args))))
    elif action == "remove":
        client.remove_condition(args.id)
    elif action == "clear":
        client.clear_conditions()
    elif args.json:
        print(json.dumps(client.conditions(), indent=2))
    else:
        for rule in client.conditions():
            print(_describe(rule))


def dispatch(args: argparse.Namespace) -> int | None:
    """Run one of our subcommands; None when ``args.command`` is not ours."""
    if args.command not in CLIENT_COMMANDS:
        return None
    if not args.api:
        msg = f"pyvpnkit {args.command}: --api URL is required (or set ${API_ENV})"
        print(msg, file=sys.stderr)
        return 2
    from pyvpnkit.api.client import ApiClient, ApiError

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
        elif args.command == "conditions":
            _conditions(client, args)
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
