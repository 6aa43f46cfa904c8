"""``python -m medsoup.book``: execute the notebooks and build the book (see :mod:`medsoup.book.build`)."""

import sys

from medsoup.book.build import main

sys.exit(main())
