"""The DuckDB warehouse: the only writer of rows (schema by ordered migrations).

Installed as ``tr111.warehouse``. The default database file is ``warehouse/tr111.duckdb`` in
a checkout (git-ignored) and ``$TR111_HOME/tr111.duckdb`` elsewhere (tr111.paths).
"""

from tr111.warehouse.connection import connect, open_read_only
from tr111.warehouse.migrations import MIGRATIONS, migrate

__all__ = ["connect", "open_read_only", "migrate", "MIGRATIONS"]
