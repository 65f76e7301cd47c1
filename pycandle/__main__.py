from pycandle.cli import main

raise SystemExit(main())
