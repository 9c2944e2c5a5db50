"""DHCP server for the VMs on the switch (RFC 2131), vpnkit-style.

We are the only server on the segment, so the server is authoritative: a
client that asks for an address (INIT-REBOOT after we restarted) gets it when
it is free, and is NAKed when it is not what we would give it, which sends it
back to DISCOVER. Addresses are bound in the pool at OFFER time; bindings that
were only offered, or whose lease ran out, are given back to the pool when it
runs dry. Router, DNS and NTP are the gateway, as in vpnkit.

Relayed requests (giaddr set) are dropped: no relay can sit between a VM and
this switch, and answering one would need the relay's MAC, which we lack.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.switch.ippool import (
    AddressPool,
    LeaseKey,
    PoolError,
    PoolExhausted,
    client_id_key,
    mac_key,
)
from pyvpnkit.core.switch.leases import LeaseClock
from pyvpnkit.wire.dhcp import (
    BOOTREPLY,
    BOOTREQUEST,
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPNAK,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    HTYPE_ETHERNET,
    OPT_BROADCAST,
    OPT_CLIENT_ID,
    OPT_DNS,
    OPT_DOMAIN_NAME,
    OPT_DOMAIN_SEARCH,
    OPT_LEASE_TIME,
    OPT_MESSAGE,
    OPT_MESSAGE_TYPE,
    OPT_MTU,
    OPT_NTP,
    OPT_REBINDING_TIME,
    OPT_RENEWAL_TIME,
    OPT_ROUTER,
    OPT_SERVER_ID,
    OPT_SUBNET_MASK,
    ZERO_IP,
    DhcpMessage,
    build_dhcp,
    encode_domain_search,
    encode_ips,
    encode_str,
    encode_u16,
    encode_u32,
    parse_dhcp,
)
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.ethernet import BROADCAST as BROADCAST_MAC

BROADCAST_IP = b"\xff\xff\xff\xff"
_U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class DhcpReply:
    """A reply to send from gateway:67 to dst_ip:68 in a frame to dst_mac."""

    payload: bytes
    dst_ip: bytes
    dst_mac: bytes


def client_key(msg: DhcpMessage) -> LeaseKey:
    """Pool key: client-id (option 61) if sent, else chaddr.

    A client-id of type 1 (Ethernet) maps to the same MAC key as chaddr,
    so udhcpc (which sends one) and dhclient (which does not) agree, and so
    does the vpnkit transport, which keys VMs by MAC too.
    """
    cid = msg.client_id
    if cid is None:
        return mac_key(msg.chaddr[:6])
    if cid[0] == HTYPE_ETHERNET and len(cid) == 7:
        return mac_key(cid[1:])
    return client_id_key(cid)


def parse_dhcp_json(text: str) -> tuple[str | None, tuple[str, ...]]:
    """vpnkit's --dhcp-path file, ``{"searchDomains": [...], "domainName": "..."}`` (both
    optional) -> (domainName or None, searchDomains); ValueError naming what is wrong."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object with searchDomains and domainName")
    search = obj.get("searchDomains", [])
    if not isinstance(search, list) or not all(isinstance(d, str) and d for d in search):
        raise ValueError("searchDomains should be a list of domain names")
    domain = obj.get("domainName")
    if domain is not None and not isinstance(domain, str):
        raise ValueError("domainName should be a string")
    encode_domain_search(search or ["check.invalid"])  # ValueError for a bad name
    return domain, tuple(search)


class DhcpServer:
    def __init__(
        self,
        config: NetConfig,
        pool: AddressPool,
        *,
        offer_hold: float = 60.0,
        decline_hold: float = 3600.0,
    ) -> None:
        self.config = config
        self.pool = pool
        self.offer_hold = offer_hold
        self.decline_hold = decline_hold
        self.lease_clock = LeaseClock(pool)
        self.stats: Counter[str] = Counter()  # no_address: a client the pool had none for
        gw = config.gateway_ip
        lease = min(config.lease_time, _U32_MAX)
        self._lease_opts = {
            OPT_LEASE_TIME: encode_u32(lease),
            OPT_RENEWAL_TIME: encode_u32(lease // 2),
            OPT_REBINDING_TIME: encode_u32(lease * 7 // 8),
        }
        # Built once (set_names rebuilds them): a bad search domain fails there, not per packet.
        self._head: dict[int, bytes] = {
            OPT_SUBNET_MASK: config.netmask,
            OPT_ROUTER: gw,
            **({OPT_DNS: config.dns_ip} if config.serve_dns else {}),
        }
        self._tail = {
            OPT_MTU: encode_u16(config.mtu),
            OPT_BROADCAST: config.subnet.broadcast_address.packed,
            OPT_NTP: encode_ips([gw]),
        }
        self._net_opts: dict[int, bytes] = {}
        self.set_names(config.domain, config.search_domains)

    def set_names(self, domain: str, search: tuple[str, ...]) -> None:
        """The domain name and search list offered (vpnkit's --dhcp-path file changes them);
        a name that cannot be encoded raises ValueError and changes nothing."""
        names = {OPT_DOMAIN_NAME: encode_str(domain)} if domain else {}
        if search:
            names[OPT_DOMAIN_SEARCH] = encode_domain_search(search)
        self._net_opts = {**self._head, **names, **self._tail}

    def handle(
        self, payload: bytes | memoryview, now: float, *, key: LeaseKey | None = None
    ) -> DhcpReply | None:
        """Answer one datagram sent to port 67; None when there is nothing to send.

        ``key`` overrides the pool key derived from the message, for links
        that already know which VM is talking.
        """
        try:
            msg = parse_dhcp(payload)
        except ParseError:
            return None
        if msg.op != BOOTREQUEST or msg.htype != HTYPE_ETHERNET or msg.hlen != 6:
            return None
        if msg.giaddr != ZERO_IP:
            return None
        self.lease_clock.unblock_expired(now)
        if key is None:
            key = client_key(msg)
        mtype = msg.message_type
        if mtype == DHCPDISCOVER:
            return self._discover(msg, key, now)
        if mtype == DHCPREQUEST:
            return self._request(msg, key, now)
        if mtype == DHCPINFORM:
            return self._reply(msg, DHCPACK, ZERO_IP, lease=False)
        if mtype == DHCPRELEASE:
            self._release(msg, key)
        elif mtype == DHCPDECLINE:
            self._decline(msg, key, now)
        return None

    # -- message types ---------------------------------------------------------

    def _discover(self, msg: DhcpMessage, key: LeaseKey, now: float) -> DhcpReply | None:
        try:
            addr = self.lease_clock.allocate(key, msg.requested_ip, now)
        except PoolExhausted:
            self.stats["no_address"] += 1  # no offer: the client retries later
            return None
        except PoolError:
            return None
        self.lease_clock.offer(key, now + self.offer_hold)
        return self._reply(msg, DHCPOFFER, addr)

    def _request(self, msg: DhcpMessage, key: LeaseKey, now: float) -> DhcpReply | None:
        sid = msg.server_id
        if sid is not None and sid != self.config.gateway_ip:
            return None  # the client chose another server's offer
        if msg.requested_ip is not None:  # SELECTING or INIT-REBOOT
            wanted = msg.requested_ip
        elif sid is None and msg.ciaddr != ZERO_IP:  # RENEWING or REBINDING
            wanted = msg.ciaddr
        else:
            return None  # malformed: no address to confirm
        if not self.config.in_subnet(wanted):
            return self._nak(msg, "requested address is not on this network")
        try:
            addr = self.lease_clock.allocate(key, wanted, now)
        except PoolError as exc:
            if isinstance(exc, PoolExhausted):
                self.stats["no_address"] += 1
            return self._nak(msg, str(exc))
        if addr != wanted:
            return self._nak(msg, "requested address is not available to this client")
        self.lease_clock.lease(key, now + self.config.lease_time)
        return self._reply(msg, DHCPACK, addr)

    def _release(self, msg: DhcpMessage, key: LeaseKey) -> None:
        if not self._ours(msg) or self.pool.owner(msg.ciaddr) != key:
            return
        self.lease_clock.release(key)

    def _decline(self, msg: DhcpMessage, key: LeaseKey, now: float) -> None:
        addr = msg.requested_ip
        if addr is None or not self._ours(msg) or self.pool.owner(addr) != key:
            return  # only the holder may give up an address
        self.lease_clock.decline(key, addr, now + self.decline_hold)

    # -- helpers -------------------------------------------------------------

    def _ours(self, msg: DhcpMessage) -> bool:
        sid = msg.server_id
        return sid is None or sid == self.config.gateway_ip

    def _reply(self, msg: DhcpMessage, mtype: int, yiaddr: bytes, lease: bool = True) -> DhcpReply:
        options: dict[int, bytes] = {
            OPT_MESSAGE_TYPE: bytes((mtype,)),
            OPT_SERVER_ID: self.config.gateway_ip,
        }
        if lease:
            options.update(self._lease_opts)
        options.update(self._net_opts)
        self._echo_client_id(msg, options)
        reply = DhcpMessage(
            op=BOOTREPLY,
            xid=msg.xid,
            chaddr=msg.chaddr,
            flags=msg.flags,
            ciaddr=msg.ciaddr,
            yiaddr=yiaddr,
            options=options,
        )
        # RFC 2131 4.1: a configured client gets unicast at ciaddr; one without
        # an address gets unicast at yiaddr unless it set the broadcast bit.
        if msg.ciaddr != ZERO_IP:
            dst = msg.ciaddr, msg.hwaddr
        elif msg.broadcast or yiaddr == ZERO_IP:
            dst = BROADCAST_IP, BROADCAST_MAC
        else:
            dst = yiaddr, msg.hwaddr
        return DhcpReply(build_dhcp(reply), *dst)

    def _nak(self, msg: DhcpMessage, why: str) -> DhcpReply:
        options: dict[int, bytes] = {
            OPT_MESSAGE_TYPE: bytes((DHCPNAK,)),
            OPT_SERVER_ID: self.config.gateway_ip,
            OPT_MESSAGE: encode_str(why),
        }
        self._echo_client_id(msg, options)
        reply = DhcpMessage(op=BOOTREPLY, xid=msg.xid, chaddr=msg.chaddr, flags=msg.flags,
                            options=options)  # fmt: skip
        # RFC 2131 4.1: NAKs are always broadcast when no relay is involved.
        return DhcpReply(build_dhcp(reply), BROADCAST_IP, BROADCAST_MAC)

    @staticmethod
    def _echo_client_id(msg: DhcpMessage, options: dict[int, bytes]) -> None:
        cid = msg.client_id
        if cid is not None:
            options[OPT_CLIENT_ID] = cid  # RFC 6842
