"""A service that loads only some backends (``FASHION_BACKENDS``), in-process (tests.asgi): asking for another
is refused, and the requests beside it are answered."""

from __future__ import annotations

import concurrent.futures

from tests.asgi import in_process
from tests.helpers import SAMPLE


def test_a_backend_not_loaded_is_refused_without_failing_other_requests(service_app):
    with in_process(service_app, {"FASHION_BACKENDS": "onnx-torch"}) as http:
        files = {"images": ("a.png", SAMPLE, "image/png")}

        def send(backend: str) -> int:
            return http.post("/classify", params={"backend": backend}, files=files).status_code

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(send, ["torch", "onnx-torch"] * 40))
        assert statuses == [400, 200] * 40
        info = http.post("/model_info").json()
        assert info["backends"]["onnx-torch"]["loaded"] and list(info["backends"]) == ["onnx-torch"]
