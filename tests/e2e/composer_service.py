"""A BentoML service composing fashion-serve with ``bentoml.depends``, as a user's own service would.

Served by the tests with ``bentoml serve tests.e2e.composer_service:Composer``; ``FASHION_COMPOSED_URL`` names
the running fashion-serve (read at import because ``bentoml.depends`` is a class attribute; this file is a test
fixture, not part of the service). Each endpoint calls fashion-serve twice: through a dependency that names our
class (BentoML builds requests from our Python input models) and through one that knows only the URL (BentoML
builds them from the served ``/schema.json``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from PIL import Image

from service.service import FashionClassifier

URL = os.environ.get("FASHION_COMPOSED_URL", "http://127.0.0.1:3000")
SAMPLES = Path(__file__).resolve().parents[2] / "fashion" / "samples"


@bentoml.service(name="fashion-composer", workers=1)
class Composer:
    """Asks fashion-serve for labels, the way a larger application would."""

    typed = bentoml.depends(FashionClassifier, url=URL)
    untyped = bentoml.depends(url=URL)

    @bentoml.api
    async def outfit(self, photo: Path) -> dict[str, Any]:
        """The photo's answer (onnx-tf, top 3) and /model_info, through both dependencies."""
        return {
            "typed": (await self.typed.to_async.classify(images=[photo], backend="onnx-tf", top_k=3))[0],
            "untyped": (await self.untyped.to_async.classify(images=[photo], backend="onnx-tf", top_k=3))[0],
            "model_info": await self.typed.to_async.model_info(),
            "model_info_untyped": await self.untyped.to_async.model_info(),
        }

    @bentoml.api
    async def samples(self) -> dict[str, Any]:
        """The bundled samples as a uint8 array through /classify_array, and /parity, through both."""
        pixels = np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted(SAMPLES.glob("*.png"))])
        return {
            "typed": await self.typed.to_async.classify_array(pixels=pixels, backend="onnx-tf"),
            "untyped": await self.untyped.to_async.classify_array(pixels=pixels, backend="onnx-tf"),
            "parity": (await self.typed.to_async.parity())["source"],
            "parity_untyped": (await self.untyped.to_async.parity())["source"],
        }
