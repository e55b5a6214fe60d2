"""``python -m wakesleep``: the same as the ``wakesleep`` command."""

import sys

from wakesleep.cli import main

sys.exit(main())
