"""``python -m geomim_hf.synthetic``: the command line of :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
