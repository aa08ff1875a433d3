"""Service settings, read from the environment when the service starts (never at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fashion.backends import BACKENDS, RUNTIME_MODULES, unavailable_backends
from fashion.env import available_cpus
from fashion.imaging import DEFAULT_FRAMING, FRAMINGS
from fashion.metrics import PARITY_TOLERANCE
from service.auth import KeyEntry, parse_keys
from service.predictions import PredictionLogConfig

# The fastest backend on the CPU here (see the benchmark); the default for requests naming none.
DEFAULT_BACKEND = "onnx-torch"


DEVICES = ("auto", "cpu", "cuda")
# Per-backend devices unless FASHION_DEVICES says otherwise. TensorFlow's GPU build needs CUDA 12 wheels
# (tensorflow[and-cuda]) beside the CUDA 13 ones torch and ONNX Runtime use: gigabytes for a model that ONNX
# Runtime already serves on the GPU, so the SavedModel stays on the CPU and /model_info says so (docs/deploy.md).
DEFAULT_DEVICES = (("savedmodel", "cpu"),)
# What a worker logs as it stops (service.service.report_requests): the API requests admission let in, how many
# got their whole answer, and how many were still in progress. The lab's harness reads it back from the log.
STOPPED_LINE = "stopped: %d API requests let in, %d answered in full, %d still in progress"


class ConfigError(ValueError):
    """A service setting is invalid."""


@dataclass(frozen=True)
class TaskLimits:
    """Dataset task limits (service.task_runner): ``FASHION_MAX_TASK_IMAGES``, ``FASHION_MAX_TASK_BYTES``,
    ``FASHION_TASK_CHUNK_IMAGES``, ``FASHION_MAX_ACTIVE_TASKS``."""

    max_images: int = 100_000
    # 100,000 raw images (784 bytes each) with their labels and the form around them fit.
    max_bytes: int = 80 * 1024 * 1024
    # Images per batcher call, as many as the service's own batches (service.service.MAX_BATCH_IMAGES): online
    # requests during a task had a lower p99 with chunks of 256 than of 1,024 (docs/tasks.md).
    chunk_images: int = 256
    max_active: int = 4
    # For tests only (FASHION_TASK_HOLD_FILE): while this file exists, a task waits before each chunk after
    # its first, so that a test sees it part-way through (and can cancel it there) without racing its end.
    hold_file: str | None = None

    def __post_init__(self) -> None:
        if min(self.max_images, self.max_bytes, self.chunk_images, self.max_active) < 1:
            raise ConfigError(f"task limits must be positive: {self}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TaskLimits:
        """Limits from ``FASHION_*`` variables in ``env``."""
        return cls(max_images=int(env.get("FASHION_MAX_TASK_IMAGES", cls.max_images)),
                   max_bytes=int(env.get("FASHION_MAX_TASK_BYTES", cls.max_bytes)),
                   chunk_images=int(env.get("FASHION_TASK_CHUNK_IMAGES", cls.chunk_images)),
                   max_active=int(env.get("FASHION_MAX_ACTIVE_TASKS", cls.max_active)),
                   hold_file=env.get("FASHION_TASK_HOLD_FILE") or None)


@dataclass(frozen=True)
class ServiceConfig:
    """What the service loads and which limits it enforces.

    Environment variables (all optional): ``FASHION_BACKENDS`` (comma list, default every backend whose runtime
    this environment has: see ``not_installed``),
    ``FASHION_DEFAULT_BACKEND``, ``FASHION_DEVICE`` (auto, cpu, cuda), ``FASHION_DEVICES`` (per backend,
    ``savedmodel=cpu,torch=cuda``; default ``savedmodel=cpu``), ``FASHION_THREADS``
    (intra-op threads per runtime), ``FASHION_MAX_BODY_BYTES``, ``FASHION_MAX_IMAGES``,
    ``FASHION_TOP_K``, ``FASHION_MAX_IN_FLIGHT`` (API requests in progress before 429),
    ``FASHION_MAX_QUEUED_IMAGES`` (images waiting for the model before 503), ``FASHION_QUEUE_BUDGET_MS``
    (a request that has waited this long for the model is answered 503 with ``Retry-After``; 0: no limit),
    ``FASHION_HEALTH_PORT`` and ``FASHION_HEALTH_HOST`` (probes on a port of their own, see service.health; 0: off),
    ``FASHION_GRPC_PORT`` and ``FASHION_GRPC_HOST`` (the Open Inference Protocol over gRPC, service.grpc_server;
    0 or empty: off),
    ``FASHION_GC_FREEZE`` (1, the default: freeze the heap once the models are warm, see
    service.gcstats; 0: leave the collector alone),
    ``FASHION_LIVENESS_STALE_S`` (seconds without an event-loop heartbeat before /livez fails),
    ``FASHION_FRAMING`` (``dataset`` or ``legacy``: how uploads are framed, see docs/inputs.md),
    ``FASHION_PARITY_TOLERANCE`` (largest probability difference between same-model backends, fashion.metrics),
    ``FASHION_API_KEYS_FILE`` or ``FASHION_API_KEYS`` (API key lines, service.auth; neither: no keys, every route
    open, as before keys existed), ``FASHION_GOLDEN_SET`` and ``FASHION_GATE_MARGIN`` (the accuracy gate of a
    version loaded at runtime, service.lifecycle), ``FASHION_DRIFT_WINDOW`` (images per drift window, service.drift;
    0: off) and ``FASHION_DRIFT_INTERVAL_S``, ``FASHION_PREDICTION_LOG`` and its options (service.predictions; unset:
    off), ``FASHION_OTLP_ENDPOINT`` (an OTLP/HTTP traces URL, service.tracing; unset: off), and the task limits of
    :class:`TaskLimits`.
    ``threads`` defaults to the container's CPU quota (:func:`available_cpus`), not the host's cores.
    """

    backends: tuple[str, ...] = tuple(BACKENDS)
    default_backend: str = DEFAULT_BACKEND
    device: str = "auto"
    devices: tuple[tuple[str, str], ...] = DEFAULT_DEVICES
    threads: int = field(default_factory=lambda: available_cpus())
    max_body_bytes: int = 8 * 1024 * 1024
    max_images: int = 1024
    top_k: int = 3
    max_in_flight: int = 256
    max_queued_images: int = 16384
    # Far above a healthy wait (a full queue of 16,384 images is a few model calls) and below the 30 s request
    # timeout; a budget of one second already refused big batch requests on a busy machine (docs/serving.md).
    queue_budget_ms: int = 5000
    health_port: int = 0
    health_host: str = "0.0.0.0"  # probes come from the node (kubelet), not from loopback
    # Off unless asked for, like the health port: a second listening port is opened on purpose (docs/serving.md).
    grpc_port: int = 0
    grpc_host: str = "0.0.0.0"
    liveness_stale_s: float = 10.0
    explicit_backends: bool = False
    framing: str = DEFAULT_FRAMING
    gc_freeze: bool = True
    # For tests only (FASHION_BATCH_HOLD_FILE): while this file exists the batcher starts no model call, so a
    # test can queue a burst and see it merged, whatever the machine's speed (service.batcher.wait_while_held).
    batch_hold_file: str | None = None
    tasks: TaskLimits = field(default_factory=TaskLimits)
    parity_tolerance: float = PARITY_TOLERANCE
    # Backends this environment cannot run, each with the modules it lacks (found once by from_env): a Bento of
    # the onnx profile (bentofile-onnx.yaml) has neither torch nor TensorFlow. Default: none missing.
    not_installed: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Salted hashes of the API keys (service.auth); empty: no keys, nothing checked.
    api_keys: tuple[KeyEntry, ...] = ()
    # Loading a new version at runtime (service.lifecycle): the golden set its accuracy is judged on
    # (FASHION_GOLDEN_SET, an .npz of ``images`` and ``labels``; unset: the bundled sample images) and how far below
    # the serving version's accuracy it may be (FASHION_GATE_MARGIN, a fraction: 0.01 is one point).
    golden_set: str | None = None
    gate_margin: float = 0.01
    # Observability (docs/observability.md): drift gauges over the last drift_window images per backend version,
    # refreshed every drift_interval_s (service.drift; a window of 0 turns them off); the sampled prediction log
    # (service.predictions; None: off); OTLP traces (service.tracing; None: off).
    drift_window: int = 1000
    drift_interval_s: float = 5.0
    prediction_log: PredictionLogConfig | None = None
    otlp_endpoint: str | None = None

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ConfigError(f"unknown backend(s) {unknown}; known: {sorted(BACKENDS)}")
        absent = [b for b in self.backends if b in dict(self.not_installed)]
        if absent:
            raise ConfigError(f"FASHION_BACKENDS names {absent}, whose runtime this environment does not have "
                              f"({self.why_not_installed(absent[0])}); installed: {list(self.installed)}")
        if self.default_backend not in self.backends:
            raise ConfigError(f"default backend {self.default_backend!r} is not among {list(self.backends)}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        for name, device in self.devices:
            if name not in BACKENDS or device not in DEVICES:
                raise ConfigError(f"FASHION_DEVICES: {name}={device} is not <backend>=auto|cpu|cuda with a backend "
                                  f"of {sorted(BACKENDS)}")
        if self.framing not in FRAMINGS:
            raise ConfigError(f"framing must be one of {list(FRAMINGS)}, not {self.framing!r}")
        if min(self.max_body_bytes, self.max_images, self.top_k, self.max_in_flight, self.max_queued_images,
               self.threads) < 1 or self.liveness_stale_s <= 0:
            raise ConfigError("limits must be positive")
        if not 0 <= self.grpc_port <= 65535:
            raise ConfigError(f"FASHION_GRPC_PORT must be a port number, or 0 for off; got {self.grpc_port}")
        if self.queue_budget_ms < 0:
            raise ConfigError("the queue budget must be 0 (no limit) or positive")
        if not 0 <= self.gate_margin <= 1:
            raise ConfigError(f"FASHION_GATE_MARGIN must be a fraction from 0 to 1, not {self.gate_margin}")
        if self.drift_window < 0 or not self.drift_interval_s > 0:
            raise ConfigError("FASHION_DRIFT_WINDOW must be 0 (off) or positive, FASHION_DRIFT_INTERVAL_S positive")
        if not self.parity_tolerance >= 0:
            raise ConfigError(f"the parity tolerance must be 0 or positive, not {self.parity_tolerance}")

    @property
    def queue_budget_s(self) -> float | None:
        """The queue wait budget in seconds, ``None`` for no limit."""
        return self.queue_budget_ms / 1000 if self.queue_budget_ms else None

    @property
    def installed(self) -> tuple[str, ...]:
        """The backends this environment can run, in :data:`BACKENDS` order."""
        missing = dict(self.not_installed)
        return tuple(name for name in BACKENDS if name not in missing)

    def why_not_installed(self, backend: str) -> str | None:
        """Why this environment cannot run ``backend`` (the modules it lacks); ``None`` when it can."""
        lacking = dict(self.not_installed).get(backend)
        return f"this environment has no {', '.join(lacking)}" if lacking else None

    def device_for(self, backend: str) -> str:
        """The device asked for ``backend``: its FASHION_DEVICES entry, else FASHION_DEVICE."""
        return dict(self.devices).get(backend, self.device)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        """Settings from ``FASHION_*`` environment variables (``env``: instead of ``os.environ``)."""
        env = os.environ if env is None else env
        not_installed = tuple(unavailable_backends().items())
        installed = tuple(name for name in BACKENDS if name not in dict(not_installed))
        if not installed:
            raise ConfigError(f"no backend can run here: none of the runtimes' modules {RUNTIME_MODULES} is installed")
        listed = env.get("FASHION_BACKENDS")
        backends = tuple(b.strip() for b in listed.split(",") if b.strip()) if listed else installed
        default = env.get("FASHION_DEFAULT_BACKEND") or (
            DEFAULT_BACKEND if DEFAULT_BACKEND in backends else backends[0])
        try:
            devices = dict(DEFAULT_DEVICES) | parse_devices(env.get("FASHION_DEVICES", ""))
            return cls(
                devices=tuple(devices.items()), backends=backends, default_backend=default,
                device=env.get("FASHION_DEVICE", "auto"),
                threads=int(env.get("FASHION_THREADS") or available_cpus()),
                max_body_bytes=int(env.get("FASHION_MAX_BODY_BYTES", cls.max_body_bytes)),
                max_images=int(env.get("FASHION_MAX_IMAGES", cls.max_images)),
                top_k=int(env.get("FASHION_TOP_K", cls.top_k)), explicit_backends=bool(listed),
                max_in_flight=int(env.get("FASHION_MAX_IN_FLIGHT", cls.max_in_flight)),
                max_queued_images=int(env.get("FASHION_MAX_QUEUED_IMAGES", cls.max_queued_images)),
                queue_budget_ms=int(env.get("FASHION_QUEUE_BUDGET_MS", cls.queue_budget_ms)),
                health_port=int(env.get("FASHION_HEALTH_PORT", cls.health_port)),
                health_host=env.get("FASHION_HEALTH_HOST", cls.health_host),
                grpc_port=int(env.get("FASHION_GRPC_PORT") or cls.grpc_port),
                grpc_host=env.get("FASHION_GRPC_HOST") or cls.grpc_host,
                liveness_stale_s=float(env.get("FASHION_LIVENESS_STALE_S", cls.liveness_stale_s)),
                framing=env.get("FASHION_FRAMING", cls.framing),
                gc_freeze=parse_switch(env.get("FASHION_GC_FREEZE", "1")),
                batch_hold_file=env.get("FASHION_BATCH_HOLD_FILE") or None,
                tasks=TaskLimits.from_env(env),
                parity_tolerance=float(env.get("FASHION_PARITY_TOLERANCE", cls.parity_tolerance)),
                not_installed=not_installed,
                api_keys=read_api_keys(env),
                golden_set=env.get("FASHION_GOLDEN_SET") or None,
                gate_margin=float(env.get("FASHION_GATE_MARGIN", cls.gate_margin)),
                drift_window=int(env.get("FASHION_DRIFT_WINDOW", cls.drift_window)),
                drift_interval_s=float(env.get("FASHION_DRIFT_INTERVAL_S", cls.drift_interval_s)),
                prediction_log=read_prediction_log(env),
                otlp_endpoint=env.get("FASHION_OTLP_ENDPOINT") or None,
            )
        except ValueError as exc:
            raise ConfigError(f"bad FASHION_* setting: {exc}") from exc


def read_api_keys(env: Mapping[str, str]) -> tuple[KeyEntry, ...]:
    """The key lines of ``FASHION_API_KEYS_FILE`` (a path) or ``FASHION_API_KEYS`` (the lines themselves).

    Either one set but holding no key is an error, not an open service: it is a mistake, and it would fail open.
    """
    path, text = env.get("FASHION_API_KEYS_FILE"), env.get("FASHION_API_KEYS")
    if path and text:
        raise ConfigError("set FASHION_API_KEYS_FILE or FASHION_API_KEYS, not both")
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"FASHION_API_KEYS_FILE: cannot read {path}: {exc.strerror}") from None
    if text is None:
        return ()
    keys = parse_keys(text)
    if not keys:
        raise ConfigError("FASHION_API_KEYS_FILE or FASHION_API_KEYS is set but holds no key line")
    return keys


def read_prediction_log(env: Mapping[str, str]) -> PredictionLogConfig | None:
    """The prediction log's settings (``FASHION_PREDICTION_LOG*``); ``None`` when no file is named."""
    path = env.get("FASHION_PREDICTION_LOG")
    if not path:
        return None
    defaults = PredictionLogConfig(path)
    return PredictionLogConfig(
        path, sample=float(env.get("FASHION_PREDICTION_LOG_SAMPLE", defaults.sample)),
        pixels=parse_switch(env.get("FASHION_PREDICTION_LOG_PIXELS", "0")),
        max_bytes=int(env.get("FASHION_PREDICTION_LOG_MAX_BYTES", defaults.max_bytes)),
        backups=int(env.get("FASHION_PREDICTION_LOG_BACKUPS", defaults.backups)))


def parse_devices(text: str) -> dict[str, str]:
    """``{"torch": "cuda", ...}`` from ``torch=cuda,savedmodel=cpu`` (FASHION_DEVICES)."""
    pairs = [item.strip() for item in text.split(",") if item.strip()]
    if any("=" not in pair for pair in pairs):
        raise ConfigError(f"FASHION_DEVICES must be <backend>=<device>, comma-separated; got {text!r}")
    return {name.strip(): device.strip() for name, _, device in (pair.partition("=") for pair in pairs)}


def parse_switch(value: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); anything else is an error."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1 or 0, got {value!r}")
