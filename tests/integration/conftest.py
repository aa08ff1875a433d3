"""The in-process service for the integration tier's HTTP tests (tests.asgi)."""

from __future__ import annotations

import pytest

from tests.asgi import in_process


@pytest.fixture(scope="module")
def batch_gate(tmp_path_factory):
    """This module's batcher gate (FASHION_BATCH_HOLD_FILE): see tests.helpers.held_batcher. No batch waits
    until a test creates the file."""
    return tmp_path_factory.mktemp("batch-gate") / "hold"


@pytest.fixture(scope="module")
def http(service_app, batch_gate):
    """A TestClient on the in-process service over the session's quick models, one per test module (a module that
    needs other settings defines its own, with them)."""
    with in_process(service_app, {"FASHION_BATCH_HOLD_FILE": str(batch_gate)}) as client:
        yield client
