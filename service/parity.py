"""Parity between loaded backends: the same images through each, compared pair by pair.

One function, :func:`compare`, serves the readiness warm-up (service.registry: the bundled sample
images, at load) and the ``/parity`` endpoint (any images, through the batcher, at any time).

How a pair is judged depends on what its two backends are:

* ``same-model``: two float32 artifacts of one exported model (same name and content version).
  The export verified each against the source model (identical top-1 on all 10,000 test images,
  probabilities within 1e-5), so they must agree on every image's top-1 and within the configured
  tolerance (``FASHION_PARITY_TOLERANCE``, default 1e-4; service.config) in every probability: the
  pair is ``consistent`` or not.
* ``quantized``: the int8 artifact against a float32 artifact of its own model. Quantization
  changes some answers (about 0.2% of the test images): reported, not judged.
* ``cross-model``: the PyTorch- and the TensorFlow-trained models are different models (they
  disagree on about 2.3% of the test images): reported, not judged.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.responses import JSONResponse

from fashion.backends import BACKENDS
from fashion.metrics import agreement
from service.batcher import MicroBatcher, OverloadedError
from service.config import ServiceConfig

if TYPE_CHECKING:  # the registry imports this module for its warm-up check
    from service.registry import ModelRegistry


@dataclass(frozen=True)
class Identity:
    """What a backend serves: the exported model (``name:version``) and the artifact's precision."""

    model: str
    precision: str

    @classmethod
    def of(cls, backend: str, manifest: dict[str, Any]) -> Identity:
        """From the backend's name and its model's manifest."""
        entry = manifest["artifacts"][BACKENDS[backend].artifact]
        precision = "int8" if "int8" in entry["format"] else "float32"
        return cls(f"{manifest['name']}:{manifest['version']}", precision)


def relation(a: Identity, b: Identity) -> str:
    """``same-model``, ``quantized`` or ``cross-model`` (see the module docstring)."""
    if a.model != b.model:
        return "cross-model"
    return "same-model" if a.precision == b.precision == "float32" else "quantized"


def compare(logits: dict[str, np.ndarray], identities: dict[str, Identity],
            tol: float = ServiceConfig.parity_tolerance) -> dict[str, Any]:
    """Compare every pair of backends' answers on the same images (fashion.metrics.agreement).

    Args:
        logits: ``float32[N, 10]`` per backend name, all for the same ``N`` images in the same order.
        identities: per backend name, the model and precision it serves.
        tol: the largest probability difference a ``same-model`` pair may show.

    Returns:
        ``images``, ``tolerance``, ``consistent`` (every same-model pair is), ``models`` (per model:
        its backends and whether they are consistent) and ``pairs`` (per pair: backends, relation,
        top-1 agreement, max absolute probability difference, the disagreeing image indices, and
        ``consistent`` for same-model pairs).
    """
    counts = {len(values) for values in logits.values()}
    if len(counts) > 1:
        raise ValueError(f"backends answered different numbers of images: {sorted(counts)}")
    pairs = []
    for a, b in itertools.combinations(logits, 2):
        found = agreement(logits[a], logits[b])
        pair: dict[str, Any] = {
            "backends": [a, b], "relation": relation(identities[a], identities[b]),
            "top1_agreement": found.top1_agreement, "max_abs_prob_diff": found.max_abs_prob_diff,
            "disagreements": found.disagreements.tolist(),
        }
        if pair["relation"] == "same-model":
            pair["consistent"] = found.within(tol)
        pairs.append(pair)
    models: dict[str, dict[str, Any]] = {}
    for name, identity in identities.items():
        if name in logits:
            models.setdefault(identity.model, {"backends": [], "consistent": True})["backends"].append(name)
    for pair in pairs:
        if not pair.get("consistent", True):
            models[identities[pair["backends"][0]].model]["consistent"] = False
    return {"images": counts.pop() if counts else 0, "tolerance": tol,
            "consistent": all(m["consistent"] for m in models.values()), "models": models, "pairs": pairs}


def failures(report: dict[str, Any]) -> list[str]:
    """One line per same-model pair that is not consistent (for the warm-up's error and the logs)."""
    lines = []
    for pair in report["pairs"]:
        if pair.get("consistent") is False:
            a, b = pair["backends"]
            lines.append(f"{a} vs {b}: top-1 agreement {pair['top1_agreement']:.4f} (disagreeing images "
                         f"{pair['disagreements'][:10]}), max |dp| {pair['max_abs_prob_diff']:.2e} "
                         f"(tolerance {report['tolerance']:g})")
    return lines


@functools.cache
def bundled_samples() -> np.ndarray:
    """The ten bundled sample images (decoded once)."""
    from fashion.samples import sample_images

    return sample_images()[0]


async def check_loaded_backends(batcher: MicroBatcher, registry: ModelRegistry,
                                pixels: np.ndarray | None) -> dict[str, Any] | JSONResponse:
    """``pixels`` (``None``: the bundled samples) through every loaded backend via the batcher, compared.

    Returns:
        The /parity answer: :func:`compare`'s report and ``source`` (``samples`` or ``request``); or 503
        with ``Retry-After`` when the batcher's queue is full.
    """
    source = "samples" if pixels is None else "request"
    pixels = bundled_samples() if pixels is None else pixels
    names = list(registry.backends)
    try:
        outputs = await asyncio.gather(*(batcher.predict(name, pixels) for name in names))
    except OverloadedError as exc:
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})
    logits = {name: out.logits for name, out in zip(names, outputs, strict=True)}
    return {"source": source, **compare(logits, registry.identities(), registry.config.parity_tolerance)}
