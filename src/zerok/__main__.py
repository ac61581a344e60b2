"""``python -m zerok`` is the ``zerok`` command."""

from zerok.cli.main import main

raise SystemExit(main())
