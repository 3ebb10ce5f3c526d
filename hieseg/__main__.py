from hieseg.app.cli import main

raise SystemExit(main())
