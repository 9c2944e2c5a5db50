"""The HTTP/HTTPS proxy: vpnkit's http_proxy.json (config) and one machine per VM connection."""
