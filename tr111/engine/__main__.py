"""``python -m tr111.engine serve ...``"""

import sys

from .cli import main

sys.exit(main())
