"""``python -m shoal.cli``: the ``shoal`` command."""

import sys

from . import main

sys.exit(main())
