"""Register exported model folders in the BentoML model store (``BENTOML_HOME`` respected)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fashion.manifest import MANIFEST_FILE, read_manifest, sha256_file


def register_model(model_dir: Path) -> str:
    """Copy an exported model folder into the BentoML store under ``name:version``.

    Registering the same content twice is a no-op (the version comes from the content).

    Returns:
        The tag, e.g. ``fashion-mlp-torch:3f9c...``.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    manifest = read_manifest(model_dir)
    tag = bentoml.Tag(manifest["name"], manifest["version"])
    try:
        return str(bentoml.models.get(tag).tag)
    except NotFound:
        pass
    labels = {"project": "fashion-serve", "framework": manifest["framework"], "preset": manifest["preset"]}
    metadata = {
        "test_accuracy": manifest["source_test_accuracy"],
        "artifacts": sorted(manifest["artifacts"]),
        "run": manifest["run"],
        "manifest_sha256": sha256_file(Path(model_dir) / MANIFEST_FILE),
    }
    with bentoml.models.create(tag, labels=labels, metadata=metadata, module="fashion.backends") as model:
        shutil.copytree(model_dir, model.path, dirs_exist_ok=True)
    return str(tag)


def model_path(tag: str) -> Path:
    """Folder of a registered model (``name`` alone means its latest version)."""
    import bentoml

    return Path(bentoml.models.get(tag).path)
