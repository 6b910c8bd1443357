"""Prefect flows: they only compose tasks; all logic lives in the tr111 core package."""
