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


def _check_entry_covers_its_path(artifact: dict[str, Any]) -> None:
    """The checksums must be those of the artifact itself: a file lists exactly itself, a folder only its own files.

    Otherwise an entry such as ``{"path": "model.onnx", "sha256": {}}`` would verify nothing and still load.
    """
    path, listed = artifact["path"], set(artifact["sha256"])
    if not listed:
        raise IntegrityError(f"{path!r}: the manifest lists no checksum for it; refusing it")
    stray = sorted(name for name in listed if name != path and not name.startswith(path.rstrip("/") + "/"))
    if stray:
        raise IntegrityError(f"{path!r}: the manifest's checksums name files outside the artifact: {stray}")


def _unlisted_entries(model_dir: Path, folder: Path, listed: set[str]) -> list[str]:
    """Files and symbolic links under a folder artifact that the manifest does not list.

    Links count even when they point to a folder: ``rglob`` does not descend into them,
    so a linked folder's files would otherwise be invisible here and still readable by the loader.
    """
    return sorted(str(p.relative_to(model_dir)) for p in folder.rglob("*")
                  if (p.is_symlink() or p.is_file()) and str(p.relative_to(model_dir)) not in listed)


def verify_artifact(model_dir: Path, artifact: dict[str, Any]) -> Path:
    """Check every file of one manifest artifact entry; return the artifact's path.

    This catches a damaged or swapped file while the manifest is intact. Someone who can
    also rewrite ``manifest.json`` gets past checksums, so each runtime adds its own checks
    on what a file may make it do (see ``fashion.backends``).

    Raises:
        IntegrityError: naming the missing, mismatching, unlisted or escaping file.
    """
    model_dir = Path(model_dir).resolve()
    _check_entry_covers_its_path(artifact)
    for relative, expected in artifact["sha256"].items():
        path = _inside(model_dir, relative)
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (listed in {MANIFEST_FILE})")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(f"{path}: SHA-256 {actual} does not match the manifest's {expected}; refusing it")
    target = _inside(model_dir, artifact["path"])
    if target.is_dir():
        extra = _unlisted_entries(model_dir, target, set(artifact["sha256"]))
        if extra:
            raise IntegrityError(f"{target}: files not in the manifest: {extra}")
    return target


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """Read ``manifest.json`` from a model folder."""
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise IntegrityError(f"{path}: missing; not an exported fashion-serve model")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc}); refusing the model") from exc


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` into a model folder."""
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
