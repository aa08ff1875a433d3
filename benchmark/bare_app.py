"""The ceiling for the service benchmark: the same work on a bare Starlette app.

Parse the same multipart upload, decode with the same policy, preprocess, run the
same ONNX model with ONNX Runtime, answer the same JSON. Nothing else: no batching,
no metrics, no validation layers. ``uvicorn benchmark.bare_app:app`` with
``FASHION_ONNX_MODEL`` pointing at an exported ``model.onnx``.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from fashion.backends import onnx_runtime
from fashion.contract import describe_predictions, preprocess, softmax
from fashion.imaging import decode_image

_predictor = None


def predictor():
    """The ONNX model, loaded on first use (nothing runs at import)."""
    global _predictor
    if _predictor is None:
        _predictor = onnx_runtime.load(os.environ["FASHION_ONNX_MODEL"], device="cpu")
    return _predictor


async def classify(request: Request) -> JSONResponse:
    form = await request.form()
    pixels = np.stack([decode_image(await f.read()) for f in form.getlist("images")])
    probs = softmax(predictor().predict(preprocess(pixels)))
    return JSONResponse(describe_predictions(probs, "bare-onnx", "-"))


async def livez(request: Request) -> PlainTextResponse:
    return PlainTextResponse("\n")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    predictor()
    yield


app = Starlette(routes=[Route("/classify", classify, methods=["POST"]), Route("/livez", livez)], lifespan=lifespan)
