"""In-process classification for ``batch --local``: an exported model, no server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.batch import Answers
from fashion.backends import BACKENDS, Predictor, load_artifact
from fashion.contract import describe_predictions, preprocess, softmax, temperature_of
from fashion.manifest import read_manifest, verify_artifact
from fashion.ood import OodDetector, load_detector

LOCAL_DEFAULT = "onnx-torch"


@dataclass
class LocalClassifier:
    """A verified artifact loaded in this process, answering like the service."""

    predictor: Predictor
    backend: str
    version: str
    temperature: float = 1.0  # the export's calibration, as the service applies it
    detector: OodDetector | None = field(default=None, repr=False)

    @classmethod
    def open(cls, model: str | None, backend: str | None) -> LocalClassifier:
        """Load ``backend``'s artifact from an exported folder, a BentoML tag, or the store's latest model."""
        backend = backend or LOCAL_DEFAULT
        spec = BACKENDS[backend]
        if model and Path(model).is_dir():
            model_dir = Path(model)
        else:
            import bentoml

            model_dir = Path(bentoml.models.get(model or f"{spec.model}:latest").path)
        predictor = load_artifact(model_dir, spec.artifact, spec.runtime, device="auto")
        manifest = read_manifest(model_dir)
        detector = load_detector(verify_artifact(model_dir, manifest["ood"])) if manifest.get("ood") else None
        return cls(predictor, backend, manifest["version"], temperature_of(manifest), detector)

    def classify(self, pixels: np.ndarray) -> list[dict[str, Any]]:
        """Full answers (label, confidence, top-k...), as the service gives them."""
        logits = self.predictor.predict(preprocess(pixels))
        scores = self.detector.score(logits, pixels) if self.detector else None
        return describe_predictions(softmax(logits, self.temperature), self.backend, self.version, ood_scores=scores,
                                    ood_threshold=self.detector.threshold if self.detector else None)

    def classify_columns(self, pixels: np.ndarray) -> Answers:
        """Class ids and confidences only, vectorised (what a batch job writes)."""
        probs = softmax(self.predictor.predict(preprocess(pixels)), self.temperature)
        class_ids = probs.argmax(axis=1)
        return Answers(class_ids.tolist(), probs[np.arange(len(probs)), class_ids].astype(float).tolist(),
                       self.backend, self.version)
