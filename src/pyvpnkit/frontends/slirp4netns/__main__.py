import sys

from pyvpnkit.frontends.slirp4netns.cli import main

sys.exit(main())
