"""``python -m perfgate_cli``: the same as the ``perfgate`` command."""

import sys

from perfgate_cli.cli import main

sys.exit(main())
