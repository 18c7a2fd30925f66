"""``python -m sbbench.cli``: the same as the ``sbbench`` command."""

import sys

from sbbench.cli.main import main

sys.exit(main())
