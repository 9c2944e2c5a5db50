"""pyvpnkit: a user-mode network stack giving VMs and namespaces the host's network."""

__version__ = "0.1.0"
