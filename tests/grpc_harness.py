"""The gRPC server (service.grpc_server) on an event loop of its own thread, over in-process service parts.

Tests call it with blocking clients from their own thread, as a separate client process would, and stop it with
the same ``stop(grace)`` the service's shutdown hook uses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

from service.auth import KeyEntry, KeyRing
from service.batcher import MicroBatcher
from service.config import ServiceConfig
from service.registry import ModelRegistry
from service.serving import Serving
from service.task_board import TaskBoard


def load_registry(config: ServiceConfig, model_dirs: dict[str, Path]) -> ModelRegistry:
    """The configured backends, loaded and warm."""
    registry = ModelRegistry(config)
    registry.load_all(model_dirs)
    assert registry.ready, registry.error
    return registry


def build_serving(config: ServiceConfig, registry: ModelRegistry, keys: tuple[KeyEntry, ...] = ()) -> Serving:
    """The service's parts as FashionClassifier builds them, over ``registry`` (loaded or not) and a new batcher."""
    batcher = MicroBatcher(registry.run_batch, 256, config.max_queued_images, config.batch_hold_file,
                           config.queue_budget_s)
    return Serving(config, registry, batcher, TaskBoard(config.tasks), keys=KeyRing(keys) if keys else None)


class GrpcServerThread:
    """A started gRPC server: ``port`` is where it listens; ``stop`` ends it."""

    def __init__(self, serving: Serving, max_message_bytes: int = 8 * 1024 * 1024, timeout_s: float = 30.0) -> None:
        from service.grpc_server import GrpcSettings, start_grpc_server

        self.serving = serving
        self.loop = asyncio.new_event_loop()
        settings = GrpcSettings("127.0.0.1", 0, max_message_bytes, timeout_s)
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.server = self.loop.run_until_complete(start_grpc_server(serving, settings))
                self.port = self.server.port
            except BaseException as exc:  # reported to the test's thread below
                failure.append(exc)
                return
            finally:
                started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="grpc-test-server", daemon=True)
        self.thread.start()
        if not started.wait(60):
            raise TimeoutError("the gRPC server did not start within 60 s")
        if failure:
            raise failure[0]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def begin_stop(self, grace: float | None) -> concurrent.futures.Future:
        """Start the service's stop (service.grpc_server.GrpcServer.stop) without waiting for it."""
        return asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)

    def stop(self, grace: float | None = None) -> None:
        """Stop as the service's shutdown hook does, then end the loop and the batcher."""
        async def end() -> None:
            if not self.server.drain.draining:  # begin_stop may have stopped it already
                await self.server.stop(grace)
            self.serving.batcher.close()  # on its own loop: it cancels the batcher's task

        asyncio.run_coroutine_threadsafe(end(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=60)
