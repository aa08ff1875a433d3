"""New model versions without a restart: load, gate, promote, roll back and unload, one at a time.

A load takes an exported model folder from the BentoML store (a tag, or by default the model's ``latest``) or
from a path, and keeps the version beside the serving one only once it has passed, in order:

1. **checksums**: every file of the backend's artifact matches its manifest (fashion.manifest), the manifest is
   that backend's model, and the runtime loads it;
2. **warm-up**: it reproduces the labels its export recorded for the bundled sample images;
3. **parity**: its other artifacts that this environment can run (same model, float32) agree with it on the
   samples within the parity tolerance (fashion.metrics.parity_report, as /parity judges). Those artifacts
   load in a child process: they need another framework (torch, TensorFlow), whose import holds the interpreter
   lock for seconds, and the event loop answering requests meanwhile would wait on it;
4. **accuracy**: on the golden set (``FASHION_GOLDEN_SET``; default: the bundled samples) it is at most the
   margin (``FASHION_GATE_MARGIN``) below the version serving now.

A refusal (:class:`RefusedError`: 422 for a broken model, 409 for one less accurate than the serving one) leaves
the serving version untouched. Promotion is one assignment (service.registry.ModelRegistry.promote): requests
already parsed carry the key of the version they were pinned to and finish on it. The replaced version stays
loaded for an instant rollback until it is unloaded. Unloading stops routing to a version, waits for the
requests pinned to it, and drops it. Loads, promotions and unloads hold one lock: they never interleave.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import fashion
from fashion.backends import BACKENDS
from fashion.env import has_nvidia_gpu
from fashion.manifest import IntegrityError, read_manifest, verify_artifact
from fashion.metrics import Identity, parity_failures, parity_report
from fashion.samples import sample_images
from fashion.servable import INTEGRITY_EXIT, load_servable
from service.batcher import MicroBatcher
from service.config import ServiceConfig
from service.registry import LoadedBackend, ModelRegistry, WarmupError, place_backends, version_key
from service.shadow import MODES, Mode

# A hang guard for a parity sibling's child process; a framework's import and one small model take seconds.
SIBLING_TIMEOUT_S = 300

log = logging.getLogger("bentoml.fashion_serve")

# A request is pinned to its version when it is parsed and queued for the model a moment later; an unloaded
# version stays reachable this long before the drain looks at the queue, so such a request still finds it.
DRAIN_GRACE_S = 0.5
# No request waits longer than the service's request timeout (service.service traffic timeout).
DRAIN_LIMIT_S = 30.0


class RefusedError(Exception):
    """A management request refused: ``status`` (404 unknown source, 409 gate or state, 422 broken model),
    ``reason`` (a short word: ``checksum``, ``warm-up``, ``parity``, ``accuracy``, ...) and the message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class GoldenSet:
    """Labelled images the accuracy gate compares versions on."""

    images: np.ndarray
    labels: np.ndarray
    source: str


def read_golden_set(path: str | None) -> GoldenSet:
    """``images`` (uint8 ``[N, 28, 28]``) and ``labels`` from an ``.npz`` file; ``None``: the bundled samples."""
    if path is None:
        images, labels = sample_images()
        return GoldenSet(images, labels, "bundled samples")
    with np.load(path, allow_pickle=False) as data:
        return GoldenSet(np.asarray(data["images"], np.uint8), np.asarray(data["labels"]), path)


def accuracy(backend: LoadedBackend, golden: GoldenSet) -> float:
    """Top-1 accuracy of ``backend`` on the golden set."""
    return float((backend.logits(golden.images).argmax(1) == golden.labels).mean())


def store_folder(model: str, source: str | None) -> Path:
    """The folder of ``source`` in the BentoML store: a tag (``name:version``), a version of ``model``, or
    ``None`` for ``model``'s latest. Raises RefusedError (404) when the store has no such model."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    tag = f"{model}:latest" if not source else source if ":" in source else f"{model}:{source}"
    try:
        return Path(bentoml.models.get(tag).path)
    except (BentoMLException, ValueError) as exc:
        raise RefusedError(404, "source", f"the model store has no {tag[:128]!r}: {exc}") from None


def resolve_source(name: str, source: str | None) -> Path:
    """An exported model folder for backend ``name``: ``source`` as a path when it names a folder, else from the
    store (:func:`store_folder`)."""
    if source and ("/" in source or source.startswith(".")):
        path = Path(source)
        if not path.is_dir():
            raise RefusedError(404, "source", f"{source[:256]!r} is not a folder")
        return path
    return store_folder(BACKENDS[name].model, source)


class Lifecycle:
    """The management operations of one worker, over its registry and batcher."""

    def __init__(self, config: ServiceConfig, registry: ModelRegistry, batcher: MicroBatcher) -> None:
        self.config, self.registry, self.batcher = config, registry, batcher
        self.lock = asyncio.Lock()
        self.serving_accuracy: dict[str, float] = {}  # by version key: the gate's reference, computed once

    @functools.cached_property
    def golden(self) -> GoldenSet:
        return read_golden_set(self.config.golden_set)

    async def load(self, name: str, source: str | None = None, promote: bool = True,
                   margin: float | None = None) -> dict[str, Any]:
        """Load, gate and (``promote``) switch to a version of backend ``name``; the answer says what happened.

        Raises:
            RefusedError: the source is unknown, or the version failed a gate; nothing changed.
        """
        self.check_backend(name)
        async with self.lock:
            model_dir = resolve_source(name, source)
            started = time.perf_counter()
            version = read_version(model_dir)
            loaded = self.registry.versions[name].get(version)
            gate: dict[str, Any] = {"skipped": "this version is loaded already"}
            if loaded is None:
                loaded, gate = await asyncio.to_thread(self.prepare, name, model_dir, margin)
                self.registry.add_version(loaded)
            else:  # the same version named by a folder whose files may differ: they must still be its files
                await asyncio.to_thread(verify_files, name, model_dir)
            replaced = self.registry.promote(name, version) if promote else None
            log.info("backend %s: version %s loaded from %s%s", name, version, model_dir,
                     f", promoted over {replaced}" if promote else "")
            return {"model": name, "version": version, "promoted": promote, "replaced": replaced, "gate": gate,
                    "seconds": round(time.perf_counter() - started, 3), "serving": self.registry.backends[name].version}

    def check_backend(self, name: str) -> None:
        if name not in self.registry.backends:
            raise RefusedError(404, "model", self.registry.why_not_loaded(name))

    def prepare(self, name: str, model_dir: Path, margin: float | None) -> tuple[LoadedBackend, dict[str, Any]]:
        """Verify, load, warm up and gate one version (in a thread: the serving version keeps answering)."""
        candidate = self.load_checked(name, model_dir)
        samples, _ = sample_images()
        try:
            logits = self.registry.warm_up(candidate, samples)
        except WarmupError as exc:
            raise RefusedError(422, "warm-up", str(exc)) from None
        return candidate, {"parity": self.check_parity(candidate, model_dir, samples, logits),
                           "accuracy": self.check_accuracy(candidate, margin)}

    def load_checked(self, name: str, model_dir: Path) -> LoadedBackend:
        """The backend's artifact of ``model_dir``, loaded after its checksums (RefusedError 422 otherwise)."""
        spec = BACKENDS[name]
        try:
            manifest = read_manifest(model_dir)
            expected = spec.model
            if manifest.get("name") != expected:
                raise RefusedError(422, "model", f"{model_dir} holds {manifest.get('name')!r}; backend {name!r} "
                                  f"serves {expected!r} models")
            if spec.artifact not in manifest.get("artifacts", {}):
                raise RefusedError(422, "model", f"{manifest['name']}:{manifest.get('version')} has no "
                                  f"{spec.artifact!r} artifact for backend {name!r}")
            requested = self.config.device_for(name)
            devices, _ = place_backends({name: requested}, has_nvidia_gpu())
            servable = load_servable(model_dir, name, devices[name], threads=self.config.threads)
        except IntegrityError as exc:
            raise RefusedError(422, "checksum", str(exc)) from None
        except RefusedError:
            raise
        except Exception as exc:  # a file that passes its checksum but is no model: the runtime's own error
            raise RefusedError(422, "load", f"{type(exc).__name__}: {exc}") from None
        return LoadedBackend.of(servable, requested)

    def check_parity(self, candidate: LoadedBackend, model_dir: Path, samples: np.ndarray,
                     logits: np.ndarray) -> dict[str, Any]:
        """The candidate against its model's other float32 artifacts this environment runs, on the samples."""
        siblings = [b for b in self.config.installed if b != candidate.name
                    and BACKENDS[b].model == BACKENDS[candidate.name].model
                    and BACKENDS[b].artifact in candidate.manifest["artifacts"]
                    and Identity.of(b, candidate.manifest).precision == "float32"]
        if Identity.of(candidate.name, candidate.manifest).precision != "float32":
            siblings = []  # an int8 artifact is not judged against float32 ones (fashion.metrics)
        outputs = {candidate.name: logits}
        identities = {candidate.name: Identity.of(candidate.name, candidate.manifest)}
        for sibling in siblings:
            outputs[sibling] = self.sibling_logits(sibling, model_dir, samples)
            identities[sibling] = Identity.of(sibling, candidate.manifest)
        report = parity_report(outputs, identities, self.config.parity_tolerance)
        if not report["consistent"]:
            raise RefusedError(422, "parity", "the version's artifacts disagree on the sample images: "
                              + "; ".join(parity_failures(report)))
        return {"compared": sorted(outputs), "tolerance": report["tolerance"],
                "max_abs_prob_diff": max((p["max_abs_prob_diff"] for p in report["pairs"]), default=0.0)}

    def sibling_logits(self, name: str, model_dir: Path, samples: np.ndarray) -> np.ndarray:
        """Backend ``name``'s logits for ``samples`` from ``model_dir``, computed by a child process (see the
        module's docstring; ``python -m fashion.servable``); RefusedError 422 when its checksums or its runtime
        refuse it."""
        devices, _ = place_backends({name: self.config.device_for(name)}, has_nvidia_gpu())
        code = Path(fashion.__file__).resolve().parents[1]  # where this process found the fashion package
        with tempfile.TemporaryDirectory(prefix="fashion-parity-") as folder:
            np.save(Path(folder) / "pixels.npy", samples)
            try:
                done = subprocess.run([sys.executable, "-m", "fashion.servable", str(model_dir), name,
                                       devices[name], folder], capture_output=True, text=True, cwd=code, check=False,
                                      timeout=SIBLING_TIMEOUT_S, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                          filter(None, (str(code), os.environ.get("PYTHONPATH"))))})
            except subprocess.TimeoutExpired:  # the load holds the lifecycle lock: never wait forever
                raise RefusedError(422, "load", f"{name}: not loaded within {SIBLING_TIMEOUT_S} s") from None
            if done.returncode == 0:
                return np.load(Path(folder) / "logits.npy")
        reason = (done.stderr.strip().splitlines() or [f"exited with {done.returncode}"])[-1]
        raise RefusedError(422, "checksum" if done.returncode == INTEGRITY_EXIT else "load", f"{name}: {reason}")

    def check_accuracy(self, candidate: LoadedBackend, margin: float | None) -> dict[str, Any]:
        """The candidate's golden-set accuracy must be at most ``margin`` below the serving version's."""
        margin = self.config.gate_margin if margin is None else margin
        serving = self.registry.backends[candidate.name]
        key = version_key(serving.name, serving.version)
        if key not in self.serving_accuracy:
            self.serving_accuracy[key] = accuracy(serving, self.golden)
        reference, found = self.serving_accuracy[key], accuracy(candidate, self.golden)
        verdict = {"golden_set": self.golden.source, "images": len(self.golden.labels), "accuracy": found,
                   "serving_accuracy": reference, "serving_version": serving.version, "margin": margin}
        if found < reference - margin:
            raise RefusedError(409, "accuracy", f"golden-set accuracy {found:.4f} on {verdict['images']} images "
                              f"({self.golden.source}) is more than {margin:g} below the serving version "
                              f"{serving.version}'s {reference:.4f}")
        return verdict

    async def promote(self, name: str, version: str) -> dict[str, Any]:
        """Make a loaded ``version`` serve backend ``name``; the replaced one stays loaded (rollback)."""
        self.check_backend(name)
        async with self.lock:
            if version not in self.registry.versions[name]:
                raise RefusedError(404, "version", self.registry.why_no_version(name, version))
            replaced = self.registry.promote(name, version)
            return {"model": name, "serving": version, "replaced": replaced}

    async def rollback(self, name: str) -> dict[str, Any]:
        """Serve the version that served before the last promotion again."""
        self.check_backend(name)
        async with self.lock:
            previous = self.registry.previous.get(name)
            if previous is None:
                raise RefusedError(409, "rollback", f"backend {name!r} has no earlier version loaded to roll back to")
            replaced = self.registry.promote(name, previous)
            return {"model": name, "serving": previous, "replaced": replaced}

    async def set_mode(self, name: str, kind: str, version: str, share: float) -> dict[str, Any]:
        """Put a loaded, non-serving ``version`` of backend ``name`` in shadow or canary mode for ``share`` of the
        requests (0: end the mode). ``promote`` and ``rollback`` end it too."""
        self.check_backend(name)
        if kind not in MODES or not 0 <= share <= 1:
            raise RefusedError(400, "mode", f"mode must be one of {list(MODES)} and share from 0 to 1")
        async with self.lock:
            if version not in self.registry.versions[name]:
                raise RefusedError(404, "version", self.registry.why_no_version(name, version))
            if version == self.registry.backends[name].version:
                raise RefusedError(409, "serving", f"version {version!r} is the one backend {name!r} serves; "
                                   f"{kind} mode needs another loaded version")
            self.registry.traffic.set(name, Mode(kind, version, share))
            return {"model": name, **self.registry.traffic.describe(name)}

    async def unload(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Unload ``version`` of backend ``name`` (``None``: every version but the serving one).

        Raises:
            RefusedError: 404 no such version; 409 it is the serving version.
        """
        self.check_backend(name)
        async with self.lock:
            serving = self.registry.backends[name].version
            targets = [version] if version else [v for v in self.registry.versions[name] if v != serving]
            for target in targets:
                try:
                    self.registry.remove_version(name, target)
                except KeyError as exc:
                    raise RefusedError(404, "version", str(exc.args[0])) from None
                except ValueError as exc:
                    raise RefusedError(409, "serving", str(exc)) from None
            for target in targets:
                await self.drain(version_key(name, target))
                self.registry.drop(name, target)
                self.serving_accuracy.pop(version_key(name, target), None)
            gc.collect()
            return {"model": name, "unloaded": targets, "serving": serving}

    async def drain(self, key: str) -> None:
        """Wait until no request pinned to ``key`` is queued, then for the model call in progress (which may hold
        one) to end; at most :data:`DRAIN_LIMIT_S` in all."""
        await asyncio.sleep(DRAIN_GRACE_S)
        deadline = time.monotonic() + DRAIN_LIMIT_S
        while time.monotonic() < deadline and any(job.backend == key for job in self.batcher.queue):
            await asyncio.sleep(0.01)
        call = self.batcher.executions
        while time.monotonic() < deadline and self.batcher.running and self.batcher.executions == call:
            await asyncio.sleep(0.01)


def verify_files(name: str, model_dir: Path) -> None:
    """The checksums of backend ``name``'s artifact in ``model_dir`` (RefusedError 422 when one differs)."""
    try:
        verify_artifact(model_dir, read_manifest(model_dir)["artifacts"][BACKENDS[name].artifact])
    except IntegrityError as exc:
        raise RefusedError(422, "checksum", str(exc)) from None
    except KeyError:
        raise RefusedError(422, "model", f"{model_dir} has no artifact for backend {name!r}") from None


def read_version(model_dir: Path) -> str:
    """The content version a model folder's manifest names (RefusedError 422 when it has no readable one)."""
    try:
        return str(read_manifest(model_dir)["version"])
    except (IntegrityError, KeyError) as exc:
        raise RefusedError(422, "checksum", f"{model_dir}: no readable manifest version ({exc})") from None


def mirror(registry: ModelRegistry, batcher: MicroBatcher, key: str, pixels: np.ndarray, logits: np.ndarray) -> None:
    """After the serving version answered ``pixels`` (pinned as ``key``) with ``logits``: when the request falls in
    a shadow mode's share, run it on the candidate too, in a task of its own (the answer does not wait)."""
    served = registry.get(key)
    if served is not registry.backends.get(served.name):
        return  # a pinned request or a canary's: only what the serving version answered is compared
    version = registry.traffic.chosen(served.name, "shadow")
    if version is None:
        return
    task = asyncio.get_running_loop().create_task(shadow(registry, batcher, served, version, pixels, logits))
    registry.traffic.tasks.add(task)
    task.add_done_callback(registry.traffic.tasks.discard)


async def shadow(registry: ModelRegistry, batcher: MicroBatcher, served: LoadedBackend, version: str,
                 pixels: np.ndarray, logits: np.ndarray) -> None:
    """One shadow request: the candidate's answer, compared with the served one (service.shadow)."""
    started = time.perf_counter()
    key = version_key(served.name, version)
    try:
        candidate = registry.get(key)
        outputs = await batcher.predict(key, pixels)
    except Exception as exc:  # unloaded meanwhile, or a full queue: the shadow gives way, and counts it
        log.debug("shadow request on %s failed: %s", key, exc)
        registry.traffic.failed(served.name, version)
        return
    registry.traffic.record(served.name, version, served.probabilities(logits),
                            candidate.probabilities(outputs.logits), time.perf_counter() - started)
