"""A servable model: one backend's artifact of an exported model folder, verified and loaded, with what its answers
need (the manifest, the calibration temperature and the "not clothing" detector).

:func:`load_servable` is the one way to load one, for the service (service.registry) and for in-process
classification without a server (clients.local).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashion.backends import BACKENDS, Predictor, load_artifact
from fashion.contract import preprocess, softmax, temperature_of
from fashion.manifest import IntegrityError, read_manifest, verify_artifact
from fashion.ood import OodDetector, load_detector


@dataclass
class Servable:
    """One backend of an exported model, loaded: its predictor and the facts its answers carry."""

    name: str
    predictor: Predictor
    manifest: dict[str, Any]
    load_seconds: float = 0.0
    # None for a model exported before the "not clothing" detector existed: answers then carry no OOD fields.
    detector: OodDetector | None = field(default=None, repr=False)

    @property
    def temperature(self) -> float:
        """The calibration temperature the export fitted (1.0 when it fitted none)."""
        return temperature_of(self.manifest)

    @property
    def version(self) -> str:
        """The exported model's content version (its manifest's ``version``)."""
        return self.manifest["version"]

    @property
    def artifact(self) -> dict[str, Any]:
        """This backend's artifact entry in the manifest (path, format, checksum, test accuracy)."""
        return self.manifest["artifacts"][BACKENDS[self.name].artifact]

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """``float32[N, 10]`` logits for ``uint8[N, 28, 28]`` pixels (scaled here, then the model)."""
        return self.predictor.predict(preprocess(pixels))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for this model's ``logits``."""
        return softmax(logits, self.temperature)

    def ood_scores(self, logits: np.ndarray, pixels: np.ndarray) -> np.ndarray | None:
        """Per image, how clothing-like it is (fashion.ood); ``None`` when the model has no detector."""
        return self.detector.score(logits, pixels) if self.detector else None


def load_ood(model_dir: Path, manifest: dict[str, Any]) -> OodDetector | None:
    """The model's "not clothing" detector, checked against its manifest entry; ``None`` if it has none."""
    entry = manifest.get("ood")
    return load_detector(verify_artifact(model_dir, entry)) if entry else None


def load_servable(model_dir: Path, backend: str, device: str = "auto", **options: Any) -> Servable:
    """Verify and load ``backend``'s artifact of the exported model in ``model_dir``, with its detector.

    Args:
        model_dir: an exported model folder (its manifest names every artifact and checksum).
        backend: a name from :data:`fashion.backends.BACKENDS`.
        device: ``auto``, ``cpu`` or ``cuda``.
        **options: runtime options (ONNX Runtime: ``threads``, ``spin``).

    Returns:
        The loaded :class:`Servable`; ``load_seconds`` times the artifact's check and load.

    Raises:
        KeyError: the model has no artifact for ``backend``.
        fashion.manifest.IntegrityError: a file does not match its manifest checksum.
    """
    spec = BACKENDS[backend]
    manifest = read_manifest(model_dir)
    start = time.perf_counter()
    predictor = load_artifact(model_dir, spec.artifact, spec.runtime, device, **options)
    return Servable(backend, predictor, manifest, time.perf_counter() - start, load_ood(model_dir, manifest))


def artifact_logits(model_dir: Path, backend: str, device: str, pixels: np.ndarray) -> np.ndarray:
    """``backend``'s logits for ``pixels``, loading its artifact (checksums verified) just for them."""
    return load_servable(model_dir, backend, device, threads=1).logits(pixels)


# The exit status of :func:`main` for an artifact that fails its checksums (1 is any other failure).
INTEGRITY_EXIT = 3


def main(argv: list[str] | None = None) -> int:
    """``python -m fashion.servable MODEL_DIR BACKEND DEVICE FOLDER``: ``FOLDER/logits.npy`` for the pixels in
    ``FOLDER/pixels.npy`` (:func:`artifact_logits`). A process serving requests runs it as a child to use another
    framework's artifact away from its own interpreter lock (service.lifecycle)."""
    model_dir, backend, device, folder = sys.argv[1:] if argv is None else argv
    try:
        logits = artifact_logits(Path(model_dir), backend, device, np.load(Path(folder) / "pixels.npy"))
    except IntegrityError as exc:
        print(exc, file=sys.stderr)
        return INTEGRITY_EXIT
    np.save(Path(folder) / "logits.npy", logits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
