"""``python -m tr111.fake_ollama``: the fake server on its own (see server.main)."""

import sys

from tr111.fake_ollama.server import main

sys.exit(main())
