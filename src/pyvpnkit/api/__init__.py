"""Control API (gvisor-tap-vsock compatible HTTP) and its command-line clients."""
