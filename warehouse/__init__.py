"""The DuckDB warehouse: the only writer of rows (schema by ordered migrations).

The default database file, ``warehouse/tr111.duckdb``, lives beside this package
and is git-ignored.
"""

from tr111.warehouse.connection import connect, open_read_only
from tr111.warehouse.migrations import MIGRATIONS, migrate

__all__ = ["connect", "open_read_only", "migrate", "MIGRATIONS"]
