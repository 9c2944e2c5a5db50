import sys

from pyvpnkit.slirp4netns.cli import main

sys.exit(main())
