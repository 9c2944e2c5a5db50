"""`pyvpnkit-slirp4netns`: pyvpnkit behind slirp4netns 1.x's command line and API socket.

rootlesskit (`--net=slirp4netns --slirp4netns-binary=...`) and podman
(`network_cmd_path`) run it exactly as they run slirp4netns.
"""

PROG = "pyvpnkit-slirp4netns"
