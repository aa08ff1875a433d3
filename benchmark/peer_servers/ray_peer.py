"""Ray Serve with ``@serve.batch`` (64 requests or 5 ms), one replica, on a local two-CPU Ray.

``python -m benchmark.peer_servers.ray_peer``; ``POST /`` with ``{"pixels": [[...28]...]}``,
``GET /`` answers once the deployment is up.
Docs: https://docs.ray.io/en/latest/serve/advanced-guides/dyn-req-batch.html
"""

from __future__ import annotations

import signal
import sys
import threading

import numpy as np

from benchmark.peer_servers.common import BATCH_TIMEOUT_S, MAX_BATCH_SIZE, load_session, port, probabilities


def build_app():
    """The bound deployment (Ray is imported here: the module stays importable without it)."""
    from ray import serve
    from starlette.requests import Request

    # Ray's default of 5 ongoing requests per replica would cap every batch at 5; its batching guide
    # asks for max_ongoing_requests of at least max_batch_size.
    @serve.deployment(max_ongoing_requests=MAX_BATCH_SIZE)
    class Classifier:
        def __init__(self) -> None:
            self.session = load_session()

        @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_TIMEOUT_S)
        async def classify(self, images: list[np.ndarray]) -> list[list[float]]:
            return probabilities(self.session, np.stack(images)).tolist()

        async def __call__(self, request: Request):
            if request.method == "GET":
                return "ready"
            body = await request.json()
            return {"probabilities": await self.classify(np.asarray(body["pixels"], dtype=np.uint8))}

    return Classifier.bind()


def main() -> None:
    import ray
    from ray import serve

    # SIGTERM exits through sys.exit, so Ray's atexit hook shuts down the local cluster it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port()})
    serve.run(build_app(), route_prefix="/")
    threading.Event().wait()  # serve.run returns once deployed; the HTTP proxy lives in Ray's processes


if __name__ == "__main__":
    main()
