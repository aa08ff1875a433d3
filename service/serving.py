"""What the running service hands to the code that answers requests: its config, models, batcher and tasks.

BentoML builds the middleware and the mounted apps (service.service) before it creates the service
instance, and it calls the input models' ``from_http_request`` as class methods: none of them can be
given the instance when they are made. So the service builds one :class:`Serving` when it starts,
admission control (service.admission) puts it on every request's ASGI state, and the parsers, the v2
routes and the task routes take it from there (:func:`serving_of`) rather than looking up globals.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service import telemetry
from service.auth import KeyRing
from service.batcher import MicroBatcher, Outputs
from service.config import ServiceConfig
from service.lifecycle import Lifecycle
from service.registry import ModelRegistry
from service.task_board import TaskBoard

# The key of the request's ASGI state (``scope["state"]``) that holds the Serving.
STATE_KEY = "fashion_serving"


class InFlight:
    """The API requests in progress, counted by admission control (service.admission).

    The batcher asks :meth:`alone` before it runs a small job on the event loop (service.batcher). Only a request
    with no other one in progress, on the same connection as the request before it, is alone: a client that waits
    for each answer before it asks again. Under load the count alone would mislead: a loop busy running each
    request's model call never starts the next request before the last has ended, so the count stays at 1 while
    other connections wait; their requests take turns, and a new connection means the job goes through the
    queue, where requests that arrive meanwhile merge with it.
    """

    def __init__(self) -> None:
        self.count = 0
        self.last_connection: object = None
        self.same_connection = False
        # Totals since the worker started, for the line it logs as it stops (service.service.report_requests):
        # whether every request let in was answered, which a client cannot tell from a closed connection.
        self.let_in = 0
        self.answered = 0

    def enter(self, connection: object) -> None:
        """A request starts on ``connection`` (the ASGI scope's ``client``, unique per open connection)."""
        self.count += 1
        self.let_in += 1
        self.same_connection = connection is not None and connection == self.last_connection
        self.last_connection = connection

    def leave(self, answered: bool = True) -> None:
        """A request has ended; ``answered``: its response was sent in full."""
        self.count -= 1
        self.answered += answered

    def totals(self) -> dict[str, int]:
        """Requests let in and answered in full since the worker started, and those in progress now."""
        return {"let_in": self.let_in, "answered": self.answered, "in_progress": self.count}

    def alone(self) -> bool:
        """At most one request (the caller's) is in progress, and it came on the previous request's connection."""
        return self.count <= 1 and self.same_connection


@dataclass(frozen=True)
class Serving:
    """The service's parts, built once per worker (service.service.FashionClassifier)."""

    config: ServiceConfig
    registry: ModelRegistry
    batcher: MicroBatcher
    tasks: TaskBoard
    in_flight: InFlight = field(default_factory=InFlight)
    # API keys (service.auth); None when none are configured, and then admission checks nothing.
    keys: KeyRing | None = None
    # What is watched (docs/observability.md), each None when off: drift gauges (service.drift.DriftMonitor), the
    # prediction log (service.predictions.PredictionLog), traces (service.tracing.Tracer).
    drift: Any = None
    predictions: Any = None
    tracer: Any = None

    def answered(self, backend: Any, decoded: float, pixels: np.ndarray, outputs: Outputs) -> None:
        """What every answered classification tells the watchers: its stages to the request's telemetry, its
        outputs to the drift gauges and the prediction log (each skipped when off).

        Args:
            backend: the fashion.servable.Servable (registry.LoadedBackend) that answered.
            decoded: when the input was decoded (``time.perf_counter()``), the end of the decode stage.
            pixels: the request's ``uint8[N, 28, 28]`` input.
            outputs: the batcher's answer (logits, scores, wait and model call).
        """
        telemetry.answered(backend.name, backend.version, decoded, outputs.queue_s, outputs.compute_s, self.tracer)
        if self.drift is not None:
            self.drift.record(backend, outputs.logits, outputs.scores)
        if self.predictions is not None:
            ctx = telemetry.current()
            self.predictions.record(ctx.id if ctx else "-", backend, outputs.logits, outputs.scores, pixels)

    def not_ready_reason(self) -> str | None:
        """``None`` once every configured backend has loaded and warmed up; else why not (loading, or the error
        that stopped loading)."""
        return None if self.registry.ready else self.registry.error or "loading"

    @functools.cached_property
    def lifecycle(self) -> Lifecycle:
        """Loads, promotions and unloads of model versions (service.lifecycle), made on first use."""
        return Lifecycle(self.config, self.registry, self.batcher)

    @property
    def management_open(self) -> bool:
        """The management routes exist only when a key with the ``admin`` scope is configured (SECURITY.md)."""
        return self.keys is not None and any("admin" in entry.scopes for entry in self.keys.entries.values())


def attach(scope: dict[str, Any], serving: Serving) -> None:
    """Put ``serving`` on the request (its ASGI state lives as long as the request, task included)."""
    scope.setdefault("state", {})[STATE_KEY] = serving


def serving_of(scope: Mapping[str, Any]) -> Serving | None:
    """The Serving that admission put on this request; ``None`` before the service exists."""
    return (scope.get("state") or {}).get(STATE_KEY)
