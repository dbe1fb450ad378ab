"""``python -m simulator.calibrate REQUEST RESULT``: the measuring process of :mod:`.process`.

Started by :func:`simulator.calibrate.process.run_task`; not meant to be run by hand.
"""

from __future__ import annotations

import sys

from simulator.calibrate.process import child_main

if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1], sys.argv[2]))
