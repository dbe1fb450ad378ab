"""``python -m simulator``: the same command line as ``ldsim``."""

from simulator.cli import main

raise SystemExit(main())
