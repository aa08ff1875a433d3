"""The in-process service for the integration tier's HTTP tests (tests.asgi)."""

from __future__ import annotations

import pytest

from tests.asgi import in_process


@pytest.fixture(scope="module")
def http(service_app):
    """A TestClient on the in-process service over the session's quick models, one per test module (a module that
    needs other settings defines its own, with them)."""
    with in_process(service_app) as client:
        yield client
