"""The answer's media type, negotiated with ``Accept``: per-image JSON, or compact rows for batch clients.

``application/json`` (the default, and what ``*/*`` or no ``Accept`` gets): one object per
image with label, confidence and top-k. ``application/x-npy``: a ``.npy`` body of
:data:`fashion.contract.ANSWER_DTYPE` rows (class id, confidence, the ten probabilities;
45 bytes an image), the backend and model version in the ``X-Fashion-Backend`` and
``X-Fashion-Model-Version`` headers; ``numpy.load`` reads it. Building and parsing a
thousand JSON answers costs milliseconds on each side; the rows cost microseconds.
An ``Accept`` that allows neither is answered 406 before any model runs (RFC 9110 §12.5.1:
the most specific matching range gives each type its weight; ties go to JSON).
"""

from __future__ import annotations

import io

import numpy as np
from starlette.responses import Response

from fashion.contract import answer_records, softmax
from service.inputs import RequestError

JSON = "application/json"
NPY = "application/x-npy"
OFFERED = (JSON, NPY)


def weight(media_range: str, offered: str) -> tuple[int, float] | None:
    """``(specificity, q)`` when one ``Accept`` element matches ``offered``, else ``None``."""
    media, *params = (p.strip() for p in media_range.split(";"))
    media = media.lower()
    kind = offered.partition("/")[0]
    specificity = 2 if media == offered else 1 if media == f"{kind}/*" else 0 if media == "*/*" else None
    if specificity is None:
        return None
    q = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = min(max(float(value), 0.0), 1.0)
            except ValueError:
                q = 0.0
    return specificity, q


def negotiate(accept: str | None) -> str:
    """The answer type for an ``Accept`` header (:data:`JSON` or :data:`NPY`).

    Raises:
        RequestError: 406, when the header allows neither.
    """
    if not accept or not accept.strip():
        return JSON
    best, best_q = None, 0.0
    for offered in OFFERED:
        matches = [w for part in accept.split(",") if part.strip() and (w := weight(part, offered))]
        q = max(matches)[1] if matches else 0.0
        if q > best_q:
            best, best_q = offered, q
    if best is None:
        raise RequestError(f"cannot answer in {accept[:100]!r}: answers are {JSON} (per image) or {NPY} (rows of "
                           "class id, confidence and probabilities)", 406)
    return best


def npy_body(records: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, records, allow_pickle=False)
    return buffer.getvalue()


def records_response(logits: np.ndarray, backend: str, model_version: str,
                     headers: dict[str, str] | None = None, temperature: float = 1.0) -> Response:
    """The compact answer for ``float32[N, 10]`` logits (probabilities calibrated with the model's ``temperature``)."""
    return Response(npy_body(answer_records(softmax(logits, temperature))), media_type=NPY,
                    headers={"X-Fashion-Backend": backend, "X-Fashion-Model-Version": model_version,
                             "Vary": "Accept", **(headers or {})})
