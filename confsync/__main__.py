from confsync.cli import main

raise SystemExit(main())
