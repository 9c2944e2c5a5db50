"""IP itself: fragment reassembly, the address families, the IPv6 layout."""
