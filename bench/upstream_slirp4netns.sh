#!/usr/bin/env bash
# slirp4netns's own test scripts and iperf3 benchmarks, run against a helper put on PATH
# under the name `slirp4netns`, as a new unprivileged user, in a private network namespace
# (its own loopback and resolver, and a veth pair with 198.51.100.1 for the outbound-addr script,
# which takes the first non-loopback IPv4 address it finds).
#
#   bash bench/upstream_slirp4netns.sh SLIRP4NETNS_CHECKOUT HELPER [tests|bench] [DURATION]
#
# SLIRP4NETNS_CHECKOUT: a clone of github.com/rootless-containers/slirp4netns (its tests/
# and benchmarks/ are run from there, not copied into this project). HELPER: the program
# to test, e.g. "$(command -v pyvpnkit-slirp4netns)" or /usr/bin/slirp4netns. `tests`
# prints one PASS/FAIL/SKIP line per script; `bench` runs benchmark-iperf3.sh (guest to
# host) and benchmark-iperf3-reverse.sh (host to guest through the API socket's port
# forward) for DURATION seconds each (default 10) at MTU 1500 and 65520 and prints
# iperf3's sender/receiver lines. Needs root (to make the user and the namespace), and
# Debian's ncat, jq, udhcpc, libcap2-bin, iperf3, iproute2, util-linux.
set -uo pipefail
suite=$(realpath "$1"); helper=$2; mode=${3:-tests}; duration=${4:-10}
user=s4n$$
ns=s4n-$$
home=$(mktemp -d /tmp/s4n-XXXXXX)
cleanup() {
    for pid in $(ps -o pid= -u "$user" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    sleep 0.2
    userdel "$user" 2>/dev/null
    ip netns del "$ns" 2>/dev/null
    rm -rf "/etc/netns/$ns"
    rm -rf "$home"
}
trap cleanup EXIT
useradd -M -d "$home" -s /bin/bash -U "$user"
mkdir -p "$home/bin" "$home/work"
cp -r "$suite/tests" "$suite/benchmarks" "$home/"   # the scripts find each other by path
printf '#!/bin/sh\nexec %s "$@"\n' "$helper" >"$home/bin/slirp4netns"
chmod 755 "$home/bin/slirp4netns"
chown -R "$user:$user" "$home"
ip netns add "$ns"
# The namespace's own resolver (ip netns exec binds it over /etc/resolv.conf): nothing,
# not the helpers' DNS forwarders either, may ask the machine's resolvers.
mkdir -p "/etc/netns/$ns"
echo "nameserver 127.0.0.1" >"/etc/netns/$ns/resolv.conf"
ip -n "$ns" link set lo up
ip -n "$ns" link add s4a type veth peer name s4b
ip -n "$ns" addr add 198.51.100.1/24 dev s4a
ip -n "$ns" link set s4a up
ip -n "$ns" link set s4b up
as_user() {
    ip netns exec "$ns" setpriv --reuid="$user" --regid="$user" --init-groups \
        env -i HOME="$home" PATH="$home/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        BENCHMARK_IPERF3_DURATION="$duration" MTU="${MTU:-1500}" \
        bash -c "cd $home/work && timeout 180 bash $1"
}
if [ "$mode" = tests ]; then
    for t in "$home"/tests/test-*.sh; do
        name=$(basename "$t" .sh)
        as_user "$t" >"$home/work/$name.log" 2>&1
        case $? in 0) r=PASS ;; 77) r=SKIP ;; *) r="FAIL (log: tail of $name)" ;; esac
        echo "${name#test-slirp4netns-} $r"
        [ "${r#FAIL}" != "$r" ] && tail -3 "$home/work/$name.log" | sed 's/^/    /'
    done
else
    for mtu in 1500 65520; do
        for b in benchmark-iperf3 benchmark-iperf3-reverse; do
            echo "== $b MTU=$mtu"
            MTU=$mtu as_user "$home/benchmarks/$b.sh" 2>/dev/null | grep -E 'sender|receiver'
        done
    done
fi
