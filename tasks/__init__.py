"""Thin Prefect task wrappers around tr111's core functions (no logic lives here)."""
