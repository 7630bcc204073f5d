"""``python -m tcplab`` is the same as the ``tcplab`` console script."""

from tcplab.cli.main import main

raise SystemExit(main())
