"""``python -m medsoup.runs``: see :mod:`medsoup.runs.cli`."""

import sys

from medsoup.runs.cli import main

sys.exit(main())
