"""Entry point of `pyvpnkit-gvproxy`: flags and configuration errors are one line each.

Exit status: 0 after SIGINT/SIGTERM, 2 for a bad flag (as Go's flag
package), 1 for a bad configuration or a socket that cannot be served (as
gvproxy's fatal errors).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from pyvpnkit import __version__
from pyvpnkit.frontends.gvproxy import flags
from pyvpnkit.frontends.gvproxy.config import ConfigError, settings
from pyvpnkit.frontends.gvproxy.flags import EXIT_CONFIG, EXIT_FLAGS, PROG, FlagError, HelpRequested
from pyvpnkit.frontends.gvproxy.run import LEVELS


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = flags.parse(list(sys.argv[1:] if argv is None else argv))
    except HelpRequested:
        print(flags.usage())
        return 0
    except FlagError as exc:
        print(f"{PROG}: {exc} (see -help)", file=sys.stderr)
        return EXIT_FLAGS
    if args["version"]:
        print(f"gvproxy version pyvpnkit-{__version__}")
        return 0
    try:
        s = settings(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    level = getattr(logging, LEVELS.get(s.log_level.lower(), "warning").upper())
    fmt = f"%(asctime)s {PROG} %(levelname)s %(name)s: %(message)s"
    try:
        if s.log_file:
            logging.basicConfig(level=level, format=fmt, filename=s.log_file, filemode="w")
        else:
            logging.basicConfig(level=level, format=fmt)
    except OSError as exc:
        print(f"{PROG}: unable to open log file {s.log_file}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    from pyvpnkit.errors import UserError
    from pyvpnkit.frontends.gvproxy.run import Gvproxy

    try:
        return asyncio.run(Gvproxy(s).run())
    except (ConfigError, UserError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
