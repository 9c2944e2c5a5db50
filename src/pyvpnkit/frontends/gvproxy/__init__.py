"""`pyvpnkit-gvproxy`: gvisor-tap-vsock's gvproxy command line and API on pyvpnkit's stack.

`flags` parses gvproxy's flags as Go does, `config` merges them with the
-config YAML and gvproxy's defaults, `run` adds gvproxy's extras to the one
Service: `front` (API sockets with /tunnel and /connect), `notify`
(-notification) and `sshfwd` (-forward-sock over asyncssh).
"""
