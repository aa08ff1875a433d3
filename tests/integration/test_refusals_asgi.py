"""Every documented refusal (tests.helpers.BAD_INPUTS) in-process: the service's ASGI app under Starlette's
TestClient (``FashionClassifier.to_asgi()``, as BentoML's own tests do), no server process needed."""

from __future__ import annotations

import pytest

from tests.helpers import BAD_INPUTS, wait_until


@pytest.fixture(scope="module")
def client(service_app):
    """A TestClient on the service, over the quickly trained models registered in the session's store."""
    from starlette.testclient import TestClient

    with TestClient(service_app) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, "the in-process service to be ready",
                   300, interval=0.25)
        yield test_client


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_a_documented_4xx_and_the_service_stays_ready(client, case):
    route, kwargs, status = BAD_INPUTS[case]
    reply = client.post(route, **kwargs)
    assert reply.status_code == status, reply.text
    body = reply.json()
    message = body[0]["error"] if isinstance(body, list) else body["error"]
    assert isinstance(message, str) and message
    assert client.get("/readyz").status_code == 200
