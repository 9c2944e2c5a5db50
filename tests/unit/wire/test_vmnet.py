"""The vpnkit/hyperkit vmnet handshake codec (layout from vpnkit's Vmnet and hyperkit)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.wire import vmnet
from pyvpnkit.wire.errors import ParseError

UUID = "9efa82d7-ebd5-4287-b1cc-ac4160a39b7d"


def test_init_layout_and_roundtrip() -> None:
    raw = vmnet.encode_init(b"c" * 40)
    assert len(raw) == vmnet.INIT_LEN == 49
    assert raw[:5] == b"VMN3T"
    assert raw[5:9] == b"\x16\x00\x00\x00"  # 22, little-endian
    init = vmnet.decode_init(raw)
    assert (init.magic, init.version, init.commit) == (b"VMN3T", 22, b"c" * 40)
    # Short commits are padded, long ones cut.
    assert vmnet.decode_init(vmnet.encode_init("abc")).commit == b"abc" + bytes(37)
    assert vmnet.decode_init(vmnet.encode_init(b"x" * 50, version=2)).version == 2


def test_init_rejects_bad_magic_and_size() -> None:
    with pytest.raises(ParseError, match="magic"):
        vmnet.decode_init(b"\x00\x00\x00\x0e" + bytes(45))  # a qemu stream, say
    with pytest.raises(ParseError):
        vmnet.decode_init(vmnet.encode_init()[:48])


def test_ethernet_command_layout() -> None:
    raw = vmnet.encode_command(vmnet.EthernetCommand(UUID))
    assert len(raw) == vmnet.COMMAND_LEN == 41
    assert raw[0] == 1 and raw[1:37] == UUID.encode() and raw[37:] == bytes(4)
    assert vmnet.decode_command(raw) == vmnet.EthernetCommand(UUID)


def test_preferred_ipv4_is_reversed_on_the_wire() -> None:
    # hyperkit byte-swaps s_addr and vpnkit reads a LE u32 of the dotted value.
    raw = vmnet.encode_command(vmnet.PreferredIPv4Command(UUID, b"\xc0\xa8\x41\x05"))
    assert raw[0] == 8
    assert raw[37:41] == b"\x05\x41\xa8\xc0"
    assert vmnet.decode_command(raw) == vmnet.PreferredIPv4Command(UUID, b"\xc0\xa8\x41\x05")


def test_uuid_is_normalised_and_zero_means_pick_one() -> None:
    raw = b"\x01" + UUID.upper().encode() + bytes(4)
    assert vmnet.decode_command(raw) == vmnet.EthernetCommand(UUID)
    assert vmnet.decode_command(b"\x01" + bytes(40)) == vmnet.EthernetCommand(None)
    assert vmnet.encode_command(vmnet.EthernetCommand(None)) == b"\x01" + bytes(40)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x01" + b"not-a-uuid".ljust(36, b"-") + bytes(4),
        b"\x01" + UUID.replace("-", "x").encode() + bytes(4),
        b"\x03" + UUID.encode() + bytes(4),  # unknown command
        b"\x01" + UUID.encode(),  # short
    ],
)
def test_bad_commands(raw: bytes) -> None:
    with pytest.raises(ParseError):
        vmnet.decode_command(raw)


def test_bind_ipv4_command_decodes() -> None:
    cmd = vmnet.BindIPv4Command(b"\x7f\x00\x00\x01", 8080, True)
    raw = vmnet.encode_command(cmd)
    assert raw[0] == 6 and raw[1:5] == b"\x01\x00\x00\x7f" and raw[5:7] == b"\x90\x1f"
    assert vmnet.decode_command(raw) == cmd


def test_vif_response_layout() -> None:
    resp = vmnet.vif_for_mtu(1500, b"\x02\x50\x00\x00\x00\x03")
    assert resp.max_packet_size == 1550
    raw = vmnet.encode_response(resp)
    assert len(raw) == vmnet.RESPONSE_LEN == 258
    assert raw[:11] == b"\x01\xdc\x05\x0e\x06\x02\x50\x00\x00\x00\x03"
    assert raw[11:] == bytes(247)
    assert vmnet.decode_response(raw) == resp
    assert vmnet.vif_for_mtu(65520, bytes(6)).max_packet_size == 0xFFFF


@pytest.mark.parametrize("reason", ["address in use", "address out of range", "pool empty"])
def test_disconnect_response(reason: str) -> None:
    raw = vmnet.encode_response(vmnet.DisconnectResponse(reason))
    assert len(raw) == 258
    assert raw[0] == 2 and raw[1] == len(reason) and raw[2 : 2 + len(reason)] == reason.encode()
    assert vmnet.decode_response(raw) == vmnet.DisconnectResponse(reason)


def test_long_disconnect_reason_is_cut_to_255_bytes() -> None:
    raw = vmnet.encode_response(vmnet.DisconnectResponse("r" * 400))
    assert len(raw) == 258 and raw[1] == 255
    assert vmnet.decode_response(raw) == vmnet.DisconnectResponse("r" * 255)


def test_bad_responses() -> None:
    with pytest.raises(ParseError):
        vmnet.decode_response(b"\x07" + bytes(257))
    with pytest.raises(ParseError):
        vmnet.decode_response(bytes(10))
    with pytest.raises(ValueError):
        vmnet.encode_response(vmnet.VifResponse(1500, 1550, b"\x01"))


@given(st.binary(min_size=41, max_size=41))
def test_decode_command_never_raises_anything_but_parse_error(raw: bytes) -> None:
    try:
        vmnet.decode_command(raw)
    except ParseError:
        pass


@given(st.binary(min_size=258, max_size=258))
def test_decode_response_never_raises_anything_but_parse_error(raw: bytes) -> None:
    try:
        vmnet.decode_response(raw)
    except ParseError:
        pass
