"""``python -m blockdrop`` = the ``blockdrop`` console script."""

import sys

from blockdrop.cli import main

sys.exit(main())
