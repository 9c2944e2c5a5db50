"""VM transports: everything that carries Ethernet frames between a VM and the switch.

``listeners.start_listener(kind, url, sink, mtu)`` opens one endpoint:

=========  ==============================================  =========================
kind       URLs                                            framing
=========  ==============================================  =========================
qemu       unix:///PATH, tcp://HOST:PORT, vsock://PORT     u32 big-endian length
vpnkit     unix:///PATH, tcp://HOST:PORT, vsock://PORT     vmnet handshake, u16 LE
bess       unixpacket:///PATH                              one frame per message
vfkit      unixgram:///PATH                                one frame per datagram
stdio      stdio                                           u16 LE length, no handshake
=========  ==============================================  =========================

The package itself imports nothing: the TAP path (links.tapdev) must load
without asyncio and every transport, so a namespace's TAP exists within
milliseconds of a launcher starting pyvpnkit-slirp4netns.
"""
