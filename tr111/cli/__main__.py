"""``python -m tr111.cli``: the same as the ``tr111`` command."""

import sys

from tr111.cli import main

sys.exit(main())
