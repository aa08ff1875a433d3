"""The ASGI callable's types, named once for every layer of ours that speaks plain ASGI (admission, seams,
telemetry, the v2 inference endpoint, the upload readers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
