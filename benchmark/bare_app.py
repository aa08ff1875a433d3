"""The bare apps the service is measured against: the same work as ours, with nothing else around it.

One Starlette app per payload kind, each reading its payload, running the same ONNX model with ONNX Runtime's
``session.run`` and answering each image's label and probabilities as JSON; no batching, no metrics, no
validation layers:

* :data:`raw_app`: the body is the images' ``uint8`` pixels, 784 bytes per image (what our v2 binary route reads);
* :data:`json_app`: ``{"pixels": [[[...]]]}`` (what our native JSON route reads);
* :data:`multipart_app` (also :data:`app`): PNG uploads in a multipart form, parsed by Starlette and decoded with
  the service's policy (``fashion.imaging.decode_image``), as our ``/classify`` does.

:data:`ceiling_app` does no work at all: a plain ASGI callable that reads the body and answers a fixed JSON
answer, the most requests per second the HTTP stack (uvicorn with httptools) can serve on this machine.

``uvicorn benchmark.bare_app:raw_app`` with ``FASHION_ONNX_MODEL`` pointing at an exported ``model.onnx``.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from benchmark.peer_servers.common import load_session, probabilities
from fashion.contract import CLASS_NAMES, IMAGE_SIZE
from fashion.imaging import decode_image

IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE
CEILING_ANSWER = json.dumps([{"label": CLASS_NAMES[0], "probabilities": [0.1] * len(CLASS_NAMES)}]).encode()
_session = None


def session():
    """The ONNX Runtime session, created on first use (nothing runs at import)."""
    global _session
    if _session is None:
        _session = load_session()
    return _session


def answer(pixels: np.ndarray) -> JSONResponse:
    """Each image's label and probabilities, from one ``session.run`` over ``uint8[N, 28, 28]`` pixels."""
    probs = probabilities(session(), pixels)
    return JSONResponse([{"label": CLASS_NAMES[int(row.argmax())], "probabilities": row.tolist()} for row in probs])


async def classify_raw(request: Request) -> Response:
    body = await request.body()
    if not body or len(body) % IMAGE_BYTES:
        return PlainTextResponse(f"the body must be uint8 pixels, {IMAGE_BYTES} bytes per image\n", status_code=400)
    return answer(np.frombuffer(body, dtype=np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE))


async def classify_json(request: Request) -> Response:
    pixels = json.loads(await request.body())["pixels"]
    return answer(np.asarray(pixels, dtype=np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE))


async def classify_multipart(request: Request) -> Response:
    form = await request.form()
    return answer(np.stack([decode_image(await f.read()) for f in form.getlist("images")]))


async def livez(request: Request) -> PlainTextResponse:
    return PlainTextResponse("\n")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    session()
    yield


def bare(endpoint) -> Starlette:
    """A Starlette app with ``endpoint`` at ``POST /classify`` and ``/livez``, the model loaded at start-up."""
    return Starlette(routes=[Route("/classify", endpoint, methods=["POST"]), Route("/livez", livez)],
                     lifespan=lifespan)


raw_app = bare(classify_raw)
json_app = bare(classify_json)
multipart_app = app = bare(classify_multipart)


async def ceiling_app(scope, receive, send) -> None:
    """Any request: read its body, answer :data:`CEILING_ANSWER` (200). Lifespan events are acknowledged."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(CEILING_ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": CEILING_ANSWER})
