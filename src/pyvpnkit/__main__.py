from pyvpnkit.cli import main

raise SystemExit(main())
