from pyvpnkit.frontends.cli import main

raise SystemExit(main())
