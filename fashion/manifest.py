"""Model manifests: what an exported model folder holds, and checking it before use.

A manifest (``manifest.json``) sits next to the files it describes. Each
artifact names its file (or folder) and the SHA-256 of every file; loading code
calls :func:`verify_artifact` and refuses anything that does not match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"


class IntegrityError(RuntimeError):
    """An artifact is missing, tampered with, or escapes its model folder."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_tree(root: Path, relative: str) -> dict[str, str]:
    """``{relative path: sha256}`` for a file, or for every file under a folder."""
    target = root / relative
    if target.is_file():
        return {relative: sha256_file(target)}
    return {
        str(path.relative_to(root)): sha256_file(path)
        for path in sorted(target.rglob("*")) if path.is_file()
    }


def content_version(checksums: dict[str, str]) -> str:
    """A short version string derived from the content of all files."""
    digest = hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(checksums.items())).encode())
    return digest.hexdigest()[:16]


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise IntegrityError(f"{relative!r} points outside the model folder {root}")
    return path


def verify_artifact(model_dir: Path, artifact: dict[str, Any]) -> Path:
    """Check every file of one manifest artifact entry; return the artifact's path.

    Raises:
        IntegrityError: naming the missing or mismatching file.
    """
    model_dir = Path(model_dir).resolve()
    for relative, expected in artifact["sha256"].items():
        path = _inside(model_dir, relative)
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (listed in {MANIFEST_FILE})")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(f"{path}: SHA-256 {actual} does not match the manifest's {expected}; refusing it")
    target = _inside(model_dir, artifact["path"])
    if target.is_dir():
        listed = set(artifact["sha256"])
        extra = [str(p.relative_to(model_dir)) for p in target.rglob("*") if p.is_file()
                 and str(p.relative_to(model_dir)) not in listed]
        if extra:
            raise IntegrityError(f"{target}: files not in the manifest: {extra}")
    return target


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """Read ``manifest.json`` from a model folder."""
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise IntegrityError(f"{path}: missing; not an exported fashion-serve model")
    return json.loads(path.read_text())


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` into a model folder."""
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
