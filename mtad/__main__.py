from mtad.cli import main

raise SystemExit(main())
