"""benchmark.bare_app in process: each payload kind hands the model the same pixels and answers the same JSON; the
HTTP stack's ceiling answers its fixed body. The model is a stand-in that records what ``session.run`` got."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from benchmark import bare_app, peers
from fashion.contract import CLASS_NAMES, INPUT_NAME
from fashion.samples import sample_paths

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


class RecordingSession:
    """``session.run`` as ONNX Runtime's: logits that depend on the input, and the input kept."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def run(self, outputs, feeds):
        batch = feeds[INPUT_NAME]
        self.seen.append(batch)
        return [np.stack([batch.reshape(len(batch), -1)[:, i * 78:(i + 1) * 78].sum(axis=1)
                          for i in range(len(CLASS_NAMES))], axis=1)]


@pytest.fixture
def session(monkeypatch):
    recording = RecordingSession()
    monkeypatch.setattr(bare_app, "_session", recording)
    return recording


def test_every_payload_kind_gives_the_model_the_same_pixels_and_answers_alike(session):
    png, pixels = peers.one_image()
    routes = {p.name: p.routes[0] for p in peers.bare_peers(png, pixels)}
    answers = {}
    for name, app in (("bare raw body", bare_app.raw_app), ("bare JSON pixels", bare_app.json_app),
                      ("bare multipart PNG", bare_app.multipart_app)):
        route = routes[name]
        with TestClient(app) as client:
            reply = client.post(route.path, content=route.body, headers={"content-type": route.content_type})
        assert reply.status_code == 200, reply.text
        answers[name] = reply.json()
    assert len(session.seen) == 3
    assert all(np.array_equal(seen, session.seen[0]) for seen in session.seen)
    assert np.array_equal(np.rint(session.seen[0][0] * 255).astype(np.uint8), pixels)
    first = answers["bare raw body"]
    assert all(a == first for a in answers.values())
    [one] = first
    assert one["label"] in CLASS_NAMES and sum(one["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_the_raw_app_refuses_a_body_that_is_not_whole_images(session):
    with TestClient(bare_app.raw_app) as client:
        assert client.post("/classify", content=b"\0" * 100).status_code == 400
    assert session.seen == []


def test_the_ceiling_answers_its_fixed_body_to_any_request():
    with TestClient(bare_app.ceiling_app) as client:
        reply = client.post("/classify", content=sample_paths()[0].read_bytes())
        assert reply.status_code == 200 and reply.json() == json.loads(bare_app.CEILING_ANSWER)
        assert client.get("/livez").status_code == 200


def test_each_of_our_routes_is_set_beside_the_bare_app_reading_its_payload():
    png, pixels = peers.one_image()
    ours = {route.label for route in peers.our_routes(png, pixels)}
    bare = {(p.name, r.label) for p in peers.bare_peers(png, pixels) for r in p.routes}
    for (peer, route), against in peers.SAME_WORK:
        assert peer == "fashion-serve" and route in ours and against in bare
    table = [{"peer": p, "route": r, "connections": c, "rps": rps, "p99_ms": p99}
             for (p, r), rps, p99 in ((("fashion-serve", "v2 binary"), 300.0, 5.0), (("bare raw body", "raw uint8"),
                                                                                     200.0, 4.0))
             for c in peers.LEVELS]
    [first, *_] = peers.compare(table)
    assert (first["ratio"], first["p99_delta_ms"]) == (1.5, 1.0)
    assert "| fashion-serve, v2 binary | bare raw body, raw uint8 | 1.50x, p99 +1.0 ms |" in \
        "\n".join(peers.render_comparison(table))
