"""Whole datasets as BentoML tasks: ``/classify_dataset/submit``, ``progress``, ``status``, ``get``, ``cancel``.

``@bentoml.task(route="/classify_dataset")`` makes BentoML serve ``submit`` (POST: stores the
request, answers a task id at once), ``status`` and ``get`` (GET ``?task_id=``), ``retry`` (POST)
and ``cancel`` (PUT). What BentoML 1.4's own server does with them (``_bentoml_impl/server/app.py``,
``_bentoml_impl/tasks/``), and what :class:`TaskMiddleware` changes:

* The task runs in this worker process, as a background step of its submit request. BentoML keeps
  the request (body base64-encoded, for ``retry``) and the answer in ``$BENTOML_HOME/task_result.db``
  (``BENTOML_RESULT_STORE``; emptied when the server starts) for a day.
* ``submit`` would read and store the whole body, without a limit, before any code of ours runs. The
  middleware reads it first: over ``FASHION_MAX_TASK_BYTES``, or announcing in its header more than
  ``FASHION_MAX_TASK_IMAGES`` images, it is answered 413; with ``FASHION_MAX_ACTIVE_TASKS`` tasks in
  progress, 429. An accepted upload goes to the task through the request's state and BentoML
  stores an empty body: base64 in SQLite costs a third more than the upload on disk for a day, and
  encoding it at submit and decoding it at every ``get`` stalled the event loop (docs/tasks.md).
  So ``retry`` is refused (409): submit the file again.
* ``status`` says ``in_progress``, ``completed``, ``failed`` or ``canceled``, never how far a task
  got: ``GET /classify_dataset/progress?task_id=`` answers images done of total from the
  :class:`TaskBoard` (this process's memory; the service has one worker).
* BentoML's own server cannot cancel: ``cancel`` marks the row canceled and answers 400, the task
  runs on, and its end overwrites the mark. The middleware answers ``cancel`` itself: it raises the
  task's flag, which the task checks before every chunk, and lets BentoML mark the row. The task
  then stops by raising :class:`TaskCancelled`, which BentoML does not catch (a ``BaseException``),
  so nothing overwrites the mark; the middleware swallows it when the submit request ends. A
  canceled task has no result (``get`` answers 400 "not completed").

With API keys (service.auth) a task belongs to the key that submitted it: every task route answers another
key's task id with the same 404 as an unknown id (``status`` and ``get`` are checked here before BentoML's own
answer), and the submit's key headers are dropped before BentoML stores its request.

The task itself (reading, chunks, the result) is service.task_runner; the progress and cancel flags
it shares with these routes are service.task_board.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
from starlette.requests import Request

from fashion.contract import ContractError, check_count
from service.admission import ASGIApp, Message, Receive, Send
from service.answers import negotiate
from service.auth import key_id_of, without_key_headers
from service.datasets import Upload, declared_count
from service.inputs import RequestError
from service.serving import Serving
from service.task_board import UPLOAD_STATE, TaskBoard, TaskCancelled, TaskProgress

TASK_ROUTE = "/classify_dataset"



async def reply(send: Send, status: int, payload: dict[str, Any]) -> None:
    """A JSON answer from the middleware."""
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_limited(receive: Receive, declared: str | None, limit: int) -> bytes | None:
    """The request body, refused (413) past ``limit`` bytes; ``None`` when the client went away."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {int(declared):,} bytes is over the task limit of {limit:,} "
                           "(FASHION_MAX_TASK_BYTES)", 413)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            raise RequestError(f"request body is over the task limit of {limit:,} bytes (FASHION_MAX_TASK_BYTES)",
                               413)
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then listens to the client again (for its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


class TaskMiddleware:
    """Limits on submit, the progress route, a cancel that works (see the module docstring).

    BentoML adds it with ``add_asgi_middleware`` (service.service), inside admission control.
    """

    def __init__(self, app: ASGIApp, current: Callable[[], Serving | None], route: str = TASK_ROUTE) -> None:
        """
        Args:
            app: the wrapped application.
            current: the running service's parts, ``None`` before it exists (service.service.current_serving).
            route: the task's route.
        """
        self.app = app
        self.current = current
        self.routes = {("POST", f"{route}/submit"): self.submit, ("POST", f"{route}/retry"): self.retry,
                       ("GET", f"{route}/progress"): self.progress, ("PUT", f"{route}/cancel"): self.cancel,
                       ("GET", f"{route}/status"): self.owned, ("GET", f"{route}/get"): self.owned}

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        handler = self.routes.get((scope.get("method"), scope.get("path"))) if scope["type"] == "http" else None
        found = self.current() if handler else None
        if found is None:
            return await self.app(scope, receive, send)
        await handler(found.tasks, scope, receive, send)

    async def submit(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        limits = board.limits
        if board.active() >= limits.max_active:
            return await reply(send, 429, {"error": f"{limits.max_active} tasks are in progress "
                                                    "(FASHION_MAX_ACTIVE_TASKS); retry when one has ended"})
        request = Request(scope)
        try:
            body = await read_limited(receive, request.headers.get("content-length"), limits.max_bytes)
            if body is None:
                return None
            if not body:
                raise RequestError("empty request body: send a dataset file", 400)
            negotiate(request.headers.get("accept"))  # 406 now, not a task that fails at its end
            upload = Upload(body, request.headers.get("content-type", ""), request.query_params.get("backend"))
            count = await anyio.to_thread.run_sync(declared_count, upload)
            if count:  # an empty dataset is the task's to report
                check_count(count, limits.max_images, "the dataset holds ", "a task")
        except ContractError as exc:  # over the image limit
            return await reply(send, 413, {"error": f"{exc.message} (FASHION_MAX_TASK_IMAGES)"})
        except RequestError as exc:
            return await reply(send, exc.error_code.value, {"error": str(exc)})
        # BentoML stores the request it is given, for `retry`: base64 in SQLite for a day, encoded on the
        # event loop at submit and decoded again by every `get` (docs/tasks.md: the loop stalls meanwhile, and
        # no online request is answered). So it gets the headers and an empty body; the task takes the
        # checked upload from the request's state, which the submit request and its task share.
        scope.setdefault("state", {})[UPLOAD_STATE] = upload
        if key_id_of(scope) is not None:
            scope = without_key_headers(scope)  # the same state; headers BentoML would store without the key
        await self.run_task_request(board, scope, replay(b"", receive), send)

    async def retry(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await reply(send, 409, {"error": "a dataset task keeps no copy of its upload, so it cannot be retried; "
                                         "submit the file again"})

    async def run_task_request(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """Pass a submit on to BentoML, note the task id it answers, and outlive the task it then runs."""
        answer = bytearray()
        task: list[TaskProgress] = []

        async def note_task_id(message: Message) -> None:
            if message["type"] == "http.response.body" and not task:
                answer.extend(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        task_id = json.loads(answer).get("task_id")
                    except (ValueError, AttributeError):
                        task_id = None
                    if isinstance(task_id, str):  # registered before BentoML starts the task, after this message
                        task.append(board.register(task_id, key_id_of(scope)))
            await send(message)

        try:
            await self.app(scope, receive, note_task_id)
        except TaskCancelled:
            pass  # the task stopped at its flag; BentoML's row says canceled, as it should
        finally:
            if task:
                task[0].end("failed", "the task ended without a result; see /classify_dataset/get")

    @staticmethod
    async def find(board: TaskBoard, scope: dict[str, Any], send: Send):
        """The task named by ``?task_id=`` if the caller's key submitted it; ``None`` once 400 or 404 has been
        answered (the same 404 for another key's task as for an unknown id)."""
        task_id = Request(scope).query_params.get("task_id")
        task = board.get(task_id, key_id_of(scope)) if task_id else None
        if task is None:
            await reply(send, 400 if not task_id else 404,
                        {"error": "task_id is required" if not task_id else "task_id not found"})
        return task

    async def owned(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """``status`` and ``get``: BentoML answers them, for the key that submitted the task only."""
        if key_id_of(scope) is None or await self.find(board, scope, send) is not None:
            await self.app(scope, receive, send)

    async def progress(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if (task := await self.find(board, scope, send)) is not None:
            await reply(send, 200, task.view())

    async def cancel(self, board: TaskBoard, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if (task := await self.find(board, scope, send)) is None:
            return None
        if not task.active:
            return await reply(send, 409, {"error": f"the task has already ended ({task.status})", **task.view()})
        task.cancel()

        async def drop(message: Message) -> None:
            pass  # BentoML's answer: "task cancellation is not supported in local development server"

        await self.app(scope, receive, drop)  # BentoML marks its row canceled
        await reply(send, 200, task.view())
