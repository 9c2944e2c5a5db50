"""compare.py's published-port rows: servers inside the stack's namespace, clients on the
host namespace's loopback reaching them through published ports.

    pub_in      iperf3 host -> VM through a published TCP port (the client sends)
    pub_out     iperf3 VM -> host (-R)
    pub_conn    connections/s through it (connect, 1 byte echoed, close)
    pub_udp_rr  UDP request/response through a published UDP port

Each stack publishes 127.0.0.1:1520N -> 520N the way its users do: pyvpnkit
`exec -p`, slirp4netns's API `add_hostfwd` (rootlesskit's --port-driver=slirp4netns),
pasta `-t`/`-u` (rootless, as podman runs it). The servers stop when a marker
file appears, so every stack ends with its command.
"""

from __future__ import annotations

import shlex
import sys
import uuid

OFFSET = 10000  # host port = server port + OFFSET
TESTS = {"pub_in": "up", "pub_out": "down", "pub_conn": "conn", "pub_udp_rr": "udp_rr"}
TCP_PORTS = (5201, 5202, 5203)
UDP_PORTS = (5204,)

# Until the connect-echo-close server answers through the published port (then all are up).
WAIT = f"""{sys.executable} -c '
import socket, time
for _ in range(300):
    try:
        with socket.create_connection(("127.0.0.1", {5202 + OFFSET}), timeout=1) as s:
            s.sendall(b"x")
            if s.recv(1) == b"x":
                break
    except OSError:
        pass
    time.sleep(0.1)
'"""

HOSTFWD = f"""{sys.executable} -c '
import json, socket, sys
for proto, port in [("tcp", p) for p in {TCP_PORTS}] + [("udp", p) for p in {UDP_PORTS}]:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(json.dumps({{"execute": "add_hostfwd", "arguments": {{"proto": proto,
        "host_addr": "127.0.0.1", "host_port": port + {OFFSET}, "guest_port": port}}}}).encode())
    s.shutdown(socket.SHUT_WR)
    assert b"error" not in s.recv(4096)
'"""


def servers(echo_server: str, stop: str) -> str:
    """The servers inside the namespace, bound to all its addresses, until `stop` exists."""
    echo = f"{sys.executable} -c {shlex.quote(echo_server)} 5202 5203 5204 any"
    return (f"iperf3 -s -p 5201 >/dev/null 2>&1 & A=$!; {echo} >/dev/null 2>&1 & B=$!; "
            f"while [ ! -e {stop} ]; do sleep 0.2; done; kill $A $B 2>/dev/null")


def publish_args() -> list[str]:
    """pyvpnkit's -p options for the servers' ports."""
    args: list[str] = []
    for p in TCP_PORTS:
        args += ["-p", f"127.0.0.1:{p + OFFSET}:{p}"]
    for p in UDP_PORTS:
        args += ["-p", f"127.0.0.1:{p + OFFSET}:{p}/udp"]
    return args


def wrap(tool: str, mtu: int, run: str, echo_server: str, user_cmd: object = None,
         baseline_src: str = "") -> str:
    """Shell command (in the host namespace): start `tool` with the servers inside and the
    ports published, run the clients (`run`, with $STACK left to fill) on the host, stop.
    pyvpnkit-base is pyvpnkit from `baseline_src` (compare.py --baseline-src)."""
    stop = f"/tmp/pvk-pub-{uuid.uuid4().hex[:8]}.stop"
    inside = servers(echo_server, stop)
    clients = f"BENCH_PORT_OFFSET={OFFSET} " + run.replace("$GW", "127.0.0.1")
    end = f"touch {stop}; wait; rm -f {stop}"
    if tool in ("pyvpnkit", "pyvpnkit-base"):
        publish = shlex.join(publish_args())
        path = f"PYTHONPATH={baseline_src} " if tool == "pyvpnkit-base" else ""
        return (f"{path}{sys.executable} -m pyvpnkit exec --mtu {mtu} --hosts /dev/null "
                f"--dns-server 127.0.0.1#53 {publish} -- sh -c {shlex.quote(inside)} & ST=$!; "
                f"{WAIT}; {clients.replace('$STACK', '$ST')}; {end}")
    if tool == "slirp4netns":
        api = f"/tmp/pvk-pub-{uuid.uuid4().hex[:8]}.sock"
        return (
            "unshare -n sleep 600 & NS=$!; sleep 0.2; "
            f"slirp4netns --configure --mtu={mtu} --api-socket {api} $NS tap0 >/dev/null 2>&1 "
            f"& SL=$!; sleep 0.5; {HOSTFWD} {api}; "
            f"nsenter -t $NS -n sh -c {shlex.quote(inside)} & "
            f"{WAIT}; {clients.replace('$STACK', '$SL')}; touch {stop}; sleep 0.5; "
            f"kill $SL $NS; wait; rm -f {stop} {api}"
        )
    if tool == "pasta-user":
        assert callable(user_cmd)
        pid = f"/tmp/pvk-ptu-{uuid.uuid4().hex[:8]}.pid"
        ports: list[str] = []
        for p in TCP_PORTS:
            ports += ["-t", f"127.0.0.1/{p + OFFSET}:{p}"]
        for p in UDP_PORTS:
            ports += ["-u", f"127.0.0.1/{p + OFFSET}:{p}"]
        cmd = user_cmd("pasta", "--config-net", "-q", "-m", str(mtu), *ports,
                       "--", "sh", "-c", inside)
        start = f"echo $$ > {pid}; exec {shlex.join(cmd)}"
        return (f"sh -c {shlex.quote(start)} & {WAIT}; "
                f"{clients.replace('$STACK', f'$(cat {pid})')}; {end}; rm -f {pid}")
    raise ValueError(f"{tool}: no published-port run")


AVAILABLE = ("pyvpnkit", "pyvpnkit-base", "slirp4netns", "pasta-user")
