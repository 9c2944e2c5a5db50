"""The composition root: builds a running service from typed options.

Every command line (cli.py, vpnkit_cli.py, slirp4netns/) parses its own flags
into an `Options` and hands it here; nothing below this package sees argparse.
"""
