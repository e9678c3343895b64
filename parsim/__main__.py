from parsim.cli import main

raise SystemExit(main())
