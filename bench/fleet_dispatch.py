"""Fleet dispatch overhead on one machine: PostgreSQL, a Prefect server on it, two process
workers, eight 1-second demo flow runs over a shared and two per-host queues.

Prints PostgreSQL and server start-up, submit -> Pending/Running, and the dispatch overhead
proper (host free -> Running, host free -> flow code start); checks that no host ran two flow
runs at once. Figures in docs/fleet.md.

    python -m bench.fleet_dispatch
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from tests.test_fleet_infra import measure_two_workers_share_a_pool

    with tempfile.TemporaryDirectory(prefix="tr111-fleet-bench-") as tmp:
        measure_two_workers_share_a_pool(Path(tmp))
    print("reproduce: python -m bench.fleet_dispatch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
