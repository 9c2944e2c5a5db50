"""The gateway's own services: DHCP, DHCPv6 and NDP."""
