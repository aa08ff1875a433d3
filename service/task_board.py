"""The task board: every dataset task of this worker by id, how far it got, how it ended, its cancel flag.

BentoML's own ``status`` says ``in_progress``, ``completed``, ``failed`` or ``canceled``, never how far
a task got, and its local server cannot cancel; the board (this process's memory; the service has one
worker) holds what the task runner (service.task_runner) and the task routes (service.task_routes) share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from service.config import TaskLimits

# As long as BentoML keeps a task's result (Sqlite3Store.RESULT_RETENTION).
RETENTION_S = 24 * 3600
MAX_REMEMBERED = 10_000
# Where the submit's checked upload waits for the task (the request's ASGI state; see task_routes.TaskMiddleware).
UPLOAD_STATE = "fashion_dataset_upload"


class TaskCancelled(BaseException):
    """Raised by a task that saw its cancel flag; a BaseException so that BentoML records no result."""


@dataclass
class TaskProgress:
    """How far one task got, and how it ended."""

    task_id: str
    status: str = "in_progress"
    done: int = 0
    total: int | None = None
    error: str | None = None
    cancel_requested: bool = False
    created: float = field(default_factory=time.time)
    finished: float | None = None
    # The id of the API key that submitted it (service.auth); None when keys are off.
    owner: str | None = None

    @property
    def active(self) -> bool:
        return self.status == "in_progress"

    def end(self, status: str, error: str | None = None) -> None:
        """Record the outcome once; a later call (a canceled task's last chunk) changes nothing."""
        if self.active:
            self.status, self.error, self.finished = status, error, time.time()

    def cancel(self) -> None:
        self.cancel_requested = True
        self.end("canceled")

    def check_cancel(self) -> None:
        """Stop here if cancel was asked for (called before each chunk)."""
        if self.cancel_requested:
            raise TaskCancelled(self.task_id)

    def view(self) -> dict[str, Any]:
        """The progress answer."""
        return {"task_id": self.task_id, "status": self.status, "done": self.done, "total": self.total,
                "error": self.error, "seconds": round((self.finished or time.time()) - self.created, 3)}


class TaskBoard:
    """Every task of this process by id: progress, outcome, cancel flag."""

    def __init__(self, limits: TaskLimits) -> None:
        self.limits = limits
        self.tasks: dict[str, TaskProgress] = {}

    def register(self, task_id: str, owner: str | None = None) -> TaskProgress:
        """The task's entry, created on first sight (at submit, or when the task starts); the submit names its
        ``owner``."""
        if task_id not in self.tasks:
            self.prune()
            self.tasks[task_id] = TaskProgress(task_id)
        if owner is not None:
            self.tasks[task_id].owner = owner
        return self.tasks[task_id]

    def get(self, task_id: str, owner: str | None = None) -> TaskProgress | None:
        """The task, if ``owner`` (the caller's key id; ``None`` when keys are off) submitted it."""
        task = self.tasks.get(task_id)
        return task if task is not None and task.owner == owner else None

    def active(self) -> int:
        return sum(task.active for task in self.tasks.values())

    def prune(self) -> None:
        """Forget finished tasks past BentoML's retention, and the oldest beyond :data:`MAX_REMEMBERED`."""
        cutoff = time.time() - RETENTION_S
        finished = [t for t in self.tasks.values() if not t.active]
        old = {t.task_id for t in finished if t.finished < cutoff}
        old |= {t.task_id for t in finished[:max(0, len(self.tasks) - MAX_REMEMBERED + 1)]}
        for task_id in old:
            del self.tasks[task_id]
