"""The DHCPv6 server (RFC 8415): stateless information and stateful IA_NA addresses.

Addresses come from an AddressPool keyed like DHCPv4's, "mac:aa:bb:..", so a VM
has one identity for both families and keeps its address across reconnects.
The MAC is taken from a DUID-LL/LLT, else from the Ethernet source, else from
an EUI-64 link-local source; a client whose MAC cannot be found (only links
without Ethernet sources) is keyed by its DUID. A second IA_NA in one message is keyed
"<key>#<iaid>" so each identity association gets its own address.

Every reply is unicast from the router's link-local address to the client's
link-local source, port 546. Advertise carries preference 255 so clients take
it at once; Solicit with Rapid Commit gets a Reply directly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.ip.ipv6_layout import Ipv6Layout
from pyvpnkit.core.switch.ippool import AddressPool, LeaseKey, PoolError, mac_key
from pyvpnkit.core.switch.leases import LeaseClock
from pyvpnkit.wire.dhcp import encode_names
from pyvpnkit.wire.dhcpv6 import (
    ADVERTISE,
    CONFIRM,
    DECLINE,
    INFORMATION_REQUEST,
    OPT_CLIENTID,
    OPT_DNS_SERVERS,
    OPT_DOMAIN_LIST,
    OPT_IA_NA,
    OPT_PREFERENCE,
    OPT_RAPID_COMMIT,
    OPT_SERVERID,
    OPT_STATUS_CODE,
    REBIND,
    RELEASE,
    RENEW,
    REPLY,
    REQUEST,
    SOLICIT,
    STATUS_NO_ADDRS_AVAIL,
    STATUS_NO_BINDING,
    STATUS_NOT_ON_LINK,
    STATUS_SUCCESS,
    Dhcpv6Message,
    IaAddress,
    IaNa,
    Options,
    build_dhcpv6,
    duid_ll,
    encode_ia_na,
    encode_status,
    parse_dhcpv6,
    parse_duid,
)
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.ipv6 import is_link_local, mac_from_interface_id

_U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Dhcpv6Reply:
    """A reply to send from the router's link-local address, port 547, to dst_ip:546."""

    payload: bytes
    src_ip: bytes
    dst_ip: bytes
    dst_mac: bytes


def client_key(duid: bytes, src_ip: bytes, src_mac: bytes) -> LeaseKey:
    """The pool key: "mac:..." whenever a MAC can be found, else "duid:<hex>"."""
    mac = parse_duid(duid).mac or src_mac or None
    if mac is None and is_link_local(src_ip):
        mac = mac_from_interface_id(src_ip[8:])
    return mac_key(mac) if mac is not None else LeaseKey("duid:" + duid.hex())


class Dhcpv6Server:
    def __init__(
        self,
        config: NetConfig,
        layout: Ipv6Layout,
        pool: AddressPool,
        *,
        offer_hold: float = 60.0,
        decline_hold: float = 3600.0,
    ) -> None:
        self.layout = layout
        self.pool = pool
        self.offer_hold = offer_hold
        self.decline_hold = decline_hold
        self.duid = duid_ll(config.gateway_mac)
        self.stats: Counter[str] = Counter()
        self.lease_clock = LeaseClock(pool)
        self._info: Options = []
        if config.serve_dns:
            domains = config.search_domains or ((config.domain,) if config.domain else ())
            self._info.append((OPT_DNS_SERVERS, layout.dns_ip))
            if domains:
                self._info.append((OPT_DOMAIN_LIST, encode_names(domains)))
        valid = min(layout.valid_lifetime, _U32_MAX)
        self._preferred = min(layout.preferred_lifetime, valid)
        self._valid = valid
        self._t1 = self._preferred // 2
        self._t2 = self._preferred * 4 // 5

    def handle(
        self,
        src_mac: bytes,
        src_ip: bytes,
        payload: bytes | memoryview,
        now: float,
        *,
        key: LeaseKey | None = None,
    ) -> Dhcpv6Reply | None:
        """Answer one datagram sent to port 547; None when there is nothing to send.

        ``key`` overrides the pool key, for links that already know the VM.
        """
        try:
            msg = parse_dhcpv6(payload)
            reply = self._dispatch(msg, src_mac, src_ip, now, key)
        except ParseError:
            self.stats["dhcpv6_malformed"] += 1
            return None
        if reply is None:
            return None
        self.stats[f"dhcpv6_reply_{reply[0]}"] += 1
        body = build_dhcpv6(reply[0], msg.transaction_id, reply[1])
        return Dhcpv6Reply(body, self.layout.link_local_ip, src_ip, src_mac)

    def _dispatch(
        self, msg: Dhcpv6Message, src_mac: bytes, src_ip: bytes, now: float, key: LeaseKey | None
    ) -> tuple[int, Options] | None:
        self.lease_clock.unblock_expired(now)
        cid, sid, mtype = msg.client_id, msg.server_id, msg.msg_type
        if sid is not None and sid != self.duid:
            return None  # meant for another server
        if mtype == INFORMATION_REQUEST:
            return REPLY, self._common(msg, cid)
        if cid is None:
            raise ParseError(f"DHCPv6 message type {mtype} without a client id")
        key = key or client_key(cid, src_ip, src_mac)
        needs_sid = mtype in (REQUEST, RENEW, RELEASE, DECLINE)
        if needs_sid != (sid is not None):
            raise ParseError(f"DHCPv6 message type {mtype} with a wrong server id presence")
        if mtype == SOLICIT:
            if msg.rapid_commit:
                return REPLY, [(OPT_RAPID_COMMIT, b"")] + self._bind(msg, key, now, commit=True)
            return ADVERTISE, [(OPT_PREFERENCE, b"\xff")] + self._bind(msg, key, now, commit=False)
        if mtype in (REQUEST, RENEW, REBIND):
            return REPLY, self._bind(msg, key, now, commit=True)
        if mtype == CONFIRM:
            held = [a.address for ia in msg.ia_nas for a in ia.addresses]
            if not held:
                return None  # RFC 8415 18.3.3: nothing to confirm, no reply
            on_link = all(self.layout.in_subnet(a) for a in held)
            status = (STATUS_SUCCESS, "") if on_link else (STATUS_NOT_ON_LINK, "not on link")
            return REPLY, self._common(msg, cid) + [(OPT_STATUS_CODE, encode_status(*status))]
        if mtype in (RELEASE, DECLINE):
            unbound = self._give_up(msg, key, now, declined=mtype == DECLINE)
            return REPLY, self._common(msg, cid) + [(OPT_STATUS_CODE, encode_status(0))] + unbound
        self.stats["dhcpv6_ignored"] += 1
        return None

    def _common(self, msg: Dhcpv6Message, cid: bytes | None) -> Options:
        head: Options = [(OPT_SERVERID, self.duid)]
        if cid is not None:
            head.insert(0, (OPT_CLIENTID, cid))
        return head + self._info

    def _bind(self, msg: Dhcpv6Message, key: LeaseKey, now: float, *, commit: bool) -> Options:
        """IA_NA answers for every IA in ``msg``; the lease runs when ``commit``."""
        out = self._common(msg, msg.client_id)
        ias = msg.ia_nas
        if not ias:
            status = (STATUS_NO_ADDRS_AVAIL, "only IA_NA addresses are offered")
            return out + [(OPT_STATUS_CODE, encode_status(*status))]
        renewing = msg.msg_type in (RENEW, REBIND)
        for i, ia in enumerate(ias):
            ia_key = key if i == 0 else LeaseKey(f"{key}#{ia.iaid}")
            out.append((OPT_IA_NA, self._ia_answer(ia, ia_key, now, commit, renewing)))
        return out

    def _ia_answer(
        self, ia: IaNa, key: LeaseKey, now: float, commit: bool, renewing: bool
    ) -> bytes:
        wanted = next((a.address for a in ia.addresses if self.layout.in_subnet(a.address)), None)
        try:
            addr = self.lease_clock.allocate(key, wanted, now)
        except PoolError:
            self.stats["dhcpv6_no_address"] += 1
            status = (STATUS_NO_ADDRS_AVAIL, "no address left")
            return encode_ia_na(ia.iaid, 0, 0, status=status)
        if commit:
            self.lease_clock.lease(key, now + self.layout.valid_lifetime)
        else:
            self.lease_clock.offer(key, now + self.offer_hold)
        given = [IaAddress(addr, self._preferred, self._valid)]
        if renewing:  # addresses the client holds that are no longer its own: lifetime 0
            given += [IaAddress(a.address, 0, 0) for a in ia.addresses if a.address != addr]
        return encode_ia_na(ia.iaid, self._t1, self._t2, given)

    def _give_up(self, msg: Dhcpv6Message, key: LeaseKey, now: float, *, declined: bool) -> Options:
        """Release or decline the IAs' addresses; IA_NAs with NoBinding for the unknown ones."""
        unbound: Options = []
        for i, ia in enumerate(msg.ia_nas):
            ia_key = key if i == 0 else LeaseKey(f"{key}#{ia.iaid}")
            for a in ia.addresses:
                if not self.layout.in_subnet(a.address) or self.pool.owner(a.address) != ia_key:
                    self.stats["dhcpv6_no_binding"] += 1
                    status = (STATUS_NO_BINDING, "no binding for this address")
                    unbound.append((OPT_IA_NA, encode_ia_na(ia.iaid, 0, 0, status=status)))
                    continue
                if declined:
                    self.lease_clock.decline(ia_key, a.address, now + self.decline_hold)
                else:
                    self.lease_clock.release(ia_key)
        return unbound
