"""Fleet sweeps: one sweep fanned out over several GPU hosts by Prefect work pools (docs/fleet.md).

The core, without Prefect: ``plan`` (who runs what), ``coordinator`` (rows, merges, statuses).
The flows are in ``tr111.flows.fleet``.
"""
