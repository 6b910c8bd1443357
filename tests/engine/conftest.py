"""Engine tests share one real engine per module (starting it costs ~0.3 s, loading the model ~1 s)."""

from __future__ import annotations

import httpx
import pytest

from tr111.engine import EmbeddedEngine

MODEL = "gemma3:270m"


def pytest_configure(config: pytest.Config) -> None:
    # Harmless when pyproject.toml already declares it.
    config.addinivalue_line("markers", "slow: loads the real model, starts servers or builds large inputs")


@pytest.fixture(scope="module")
def engine():
    with EmbeddedEngine(startup_timeout_s=60) as running:
        yield running


@pytest.fixture(scope="module")
def client(engine):
    with httpx.Client(base_url=engine.url, timeout=httpx.Timeout(180.0, connect=5.0)) as http:
        yield http
