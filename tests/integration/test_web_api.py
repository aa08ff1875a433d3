"""What the web page at /ui/ relies on, in-process (tests.asgi): the API options the page uses, the static
route's safety and headers. The page itself in a real browser: tests/e2e/test_web.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fashion.imaging import decode_image
from fashion.samples import sample_paths
from tests.asgi import get_as_sent
from tests.helpers import offline_probabilities

TROUSER, ANKLE_BOOT = sample_paths()[1], sample_paths()[9]


# ---------- the API options the page relies on ----------


def test_top_k_10_gives_every_probability_and_return_input_the_models_pixels(http, exported):
    data = ANKLE_BOOT.read_bytes()
    reply = http.post("/classify", params={"top_k": 10, "return_input": 1},
                      files={"images": (ANKLE_BOOT.name, data, "image/png")})
    assert reply.status_code == 200, reply.text
    [answer] = reply.json()
    assert sorted(t["class_id"] for t in answer["top_k"]) == list(range(10))
    probs = np.zeros(10)
    for entry in answer["top_k"]:
        probs[entry["class_id"]] = entry["probability"]
    np.testing.assert_allclose(probs, offline_probabilities(exported, "onnx-torch", ANKLE_BOOT), atol=1e-5)
    assert np.array_equal(np.array(answer["pixels"], dtype=np.uint8), decode_image(data))
    # The same options as form fields, on /classify_batch, keep the input order.
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in (TROUSER, ANKLE_BOOT)]
    reply = http.post("/classify_batch", files=files, data={"top_k": "1", "return_input": "true"})
    assert reply.status_code == 200, reply.text
    for answer, path in zip(reply.json(), (TROUSER, ANKLE_BOOT), strict=True):
        assert len(answer["top_k"]) == 1
        assert np.array_equal(np.array(answer["pixels"], dtype=np.uint8), decode_image(path.read_bytes()))


def test_answers_without_the_options_are_unchanged(http):
    reply = http.post("/classify", files={"images": (TROUSER.name, TROUSER.read_bytes(), "image/png")})
    [answer] = reply.json()
    assert len(answer["top_k"]) == 3 and "pixels" not in answer


@pytest.mark.parametrize(("option", "value"), [("top_k", "0"), ("top_k", "11"), ("top_k", "-1"), ("top_k", "3.5"),
                                               ("top_k", "all"), ("return_input", "yes"), ("return_input", "2")])
def test_bad_option_values_are_refused_with_a_message(http, option, value):
    reply = http.post("/classify", params={option: value},
                      files={"images": (TROUSER.name, TROUSER.read_bytes(), "image/png")})
    assert reply.status_code == 400, reply.text
    assert option in reply.json()[0]["error"]


# ---------- the static route ----------


@pytest.mark.parametrize("target", [
    "/ui/..%2fservice%2fservice.py", "/ui/..%2f..%2fpyproject.toml", "/ui/../pyproject.toml", "/ui/%2e%2e/README.md",
    "/ui/.%2e/service/web.py", "/ui/%2fetc%2fpasswd", "/ui//etc/passwd", "/ui/samples/..%2f__init__.py",
    "/ui/samples/", "/ui/samples", "/ui/web/app.js", "/ui/app.js%00.png", "/ui/..%5cservice%5cweb.py",
    "/ui/.git/config", "/ui/%252e%252e%252fpyproject.toml",
    # The benchmark view left the page: a Bento carries no results/ file (docs/serving.md, "The web page").
    "/ui/benchmarks.json",
])
def test_the_static_route_serves_only_its_own_files(http, target):
    status, headers, body = get_as_sent(http, target)
    assert status == 404, body[:200]
    assert {k: v for k, v in json.loads(body).items() if k != "request_id"} == {"error": "not found"}
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(("path", "content_type"), [
    ("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/charts.js", "text/javascript"),
    ("/ui/style.css", "text/css"), ("/ui/icon.svg", "image/svg+xml"), (f"/ui/samples/{TROUSER.name}", "image/png"),
    ("/ui/samples.json", "application/json"),
])
def test_page_files_carry_a_strict_policy(http, path, content_type):
    status, headers, body = get_as_sent(http, path)
    assert status == 200 and headers["content-type"].startswith(content_type)
    policy = dict(d.strip().split(" ", 1) for d in headers["content-security-policy"].split(";"))
    assert policy["default-src"] == policy["script-src"] == policy["style-src"] == "'self'"
    assert "unsafe" not in headers["content-security-policy"] and policy["frame-ancestors"] == "'none'"
    assert headers["x-content-type-options"] == "nosniff"
    if path.startswith("/ui/samples/"):
        assert body == TROUSER.read_bytes()


def test_api_docs_page_still_works_and_links_the_page(http):
    assert http.get("/").status_code == 200
    spec = http.get("/docs.json").json()
    assert "/ui/" in spec["paths"]["/classify"]["post"]["description"]
    assert http.get("/ui", follow_redirects=True).url.path == "/ui/"
