"""Triton's model repository and statistics extensions, on the v2 app (service.v2).

* ``POST /v2/repository/index``: every model version, ``READY`` (loaded) or ``UNAVAILABLE`` with the reason.
* ``POST /v2/repository/models/{m}/load``: load a version of backend ``m`` (service.lifecycle), gate it and
  promote it, as Triton's load serves what it loads. Parameters (JSON ``{"parameters": {...}}`` or the query):
  ``source`` (a store tag, a version of ``m``'s model, or a folder; default: the store's latest), ``promote``
  (``false``: keep it beside the serving version, pinnable by version), ``accuracy_margin`` (this load's gate).
* ``POST /v2/repository/models/{m}/unload``: unload ``version`` (parameter or query), or every version of ``m``
  but the serving one. The serving version is never unloaded (409): every configured backend keeps answering.
* ``POST /v2/repository/models/{m}/promote`` (``version``) and ``/rollback``: switch the serving version; and
  ``/shadow`` and ``/canary`` (``version``, ``share``; service.shadow). Not Triton's; beside its routes so that
  one scope and one prefix cover every management call.
* ``GET /v2/models[/{m}[/versions/{v}]]/stats``: statistics in Triton's format (service.stats).

The repository routes need an API key with the ``admin`` scope (service.auth) and exist only when one is
configured: without, they answer 404 (SECURITY.md). Specifications:
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_model_repository.md,
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_statistics.md.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fashion.backends import BACKENDS
from service.inputs import RequestError, read_body
from service.lifecycle import RefusedError
from service.registry import ModelRegistry, version_key
from service.serving import Serving, serving_of

# A management request is a few parameters; anything larger is a mistake.
MAX_MANAGEMENT_BYTES = 64 * 1024
LOAD_PARAMETERS = {"source", "promote", "accuracy_margin"}
# tritonclient's unload_model always sends unload_dependents (there are no ensembles here to unload).
UNLOAD_PARAMETERS = {"version", "unload_dependents"}


def answers_refusals(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Turn a refusal (:class:`RefusedError`) or a body over its limit into the JSON error, as v2 answers them
    (``{"error": ...}``, here with the refusal's ``reason``)."""

    @functools.wraps(handler)
    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except RefusedError as exc:
            return refused(exc)
        except RequestError as exc:
            return JSONResponse({"error": exc.message, "reason": "request"}, status_code=int(exc.error_code))

    return handle


def serving(request: Request) -> Serving:
    """The service's parts (put on the request by admission control), or 503 while it is being created."""
    found = serving_of(request.scope)
    if found is None:
        raise RefusedError(503, "starting", "the service is starting")
    return found


def management(request: Request) -> Serving:
    """The service's parts, or 404 when no key with the ``admin`` scope is configured (the routes do not exist)."""
    found = serving(request)
    if not found.management_open:
        raise RefusedError(404, "off", "not found: model management is off (configure an API key with the 'admin' "
                           "scope)")
    return found


async def read_parameters(request: Request, known: set[str]) -> dict[str, Any]:
    """The request's ``parameters`` object (an empty body: none), then the query's, checked against ``known``."""
    body = await read_body(request, MAX_MANAGEMENT_BYTES, allow_empty=True)
    try:
        payload = json.loads(body) if body.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RefusedError(400, "request", f"the request is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("parameters", {}), dict):
        raise RefusedError(400, "request", "the request must be a JSON object with an optional 'parameters' object")
    found = {**payload.get("parameters", {}), **request.query_params}
    unknown = sorted(set(found) - known)
    if unknown:
        raise RefusedError(400, "request", f"unknown parameter(s) {unknown}; expected some of {sorted(known)}")
    return found


def flag(value: Any, name: str) -> bool:
    """A JSON boolean, or ``true``/``false`` from the query."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1"):
        return True
    if str(value).lower() in ("false", "0"):
        return False
    raise RefusedError(400, "request", f"{name!r} must be true or false")


def margin(value: Any, name: str = "accuracy_margin") -> float | None:
    """A fraction from 0 to 1 (the accuracy gate's margin for one load, a mode's share)."""
    if value is None:
        return None
    try:
        found = float(value)
    except (TypeError, ValueError):
        found = -1.0
    if isinstance(value, bool) or not 0 <= found <= 1:
        raise RefusedError(400, "request", f"{name!r} must be a fraction from 0 to 1")
    return found


def text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RefusedError(400, "request", f"{name!r} must be a non-empty string")
    return value


def refused(exc: RefusedError) -> JSONResponse:
    """A management refusal: the status, the reason's word and the message."""
    return JSONResponse({"error": exc.message, "reason": exc.reason}, status_code=exc.status)


def model_name(request: Request) -> str:
    name = request.path_params["model"]
    if name not in BACKENDS:
        raise RefusedError(404, "request", f"unknown model {name[:64]!r}; models: {sorted(BACKENDS)}")
    return name


@answers_refusals
async def repository_index(request: Request) -> Response:
    """Every loaded version of every model (``READY``), then the models not loaded, with why."""
    found = management(request)
    await read_body(request, MAX_MANAGEMENT_BYTES, allow_empty=True)  # tritonclient sends "" or {"ready": ...}
    return JSONResponse(index(found.registry))


def index(registry: ModelRegistry) -> list[dict[str, str]]:
    """Triton's repository index entries."""
    ready = [{"name": name, "version": version, "state": "READY", "reason": ""}
             for name, versions in registry.versions.items() if name in registry.backends for version in versions]
    return ready + [{"name": name, "version": "", "state": "UNAVAILABLE", "reason": registry.why_not_loaded(name)}
                    for name in BACKENDS if name not in registry.backends]


@answers_refusals
async def load(request: Request) -> Response:
    found, name = management(request), model_name(request)
    params = await read_parameters(request, LOAD_PARAMETERS)
    return JSONResponse(await found.lifecycle.load(name, text(params.get("source"), "source"),
                                                   flag(params.get("promote", True), "promote"),
                                                   margin(params.get("accuracy_margin"))))


@answers_refusals
async def unload(request: Request) -> Response:
    found, name = management(request), model_name(request)
    params = await read_parameters(request, UNLOAD_PARAMETERS)
    return JSONResponse(await found.lifecycle.unload(name, text(params.get("version"), "version")))


@answers_refusals
async def promote(request: Request) -> Response:
    found, name = management(request), model_name(request)
    version = text((await read_parameters(request, {"version"})).get("version"), "version")
    if version is None:
        raise RefusedError(400, "request", "'version' is required: the loaded version to serve")
    return JSONResponse(await found.lifecycle.promote(name, version))


@answers_refusals
async def rollback(request: Request) -> Response:
    found, name = management(request), model_name(request)
    await read_parameters(request, set())
    return JSONResponse(await found.lifecycle.rollback(name))


@answers_refusals
async def set_mode(request: Request) -> Response:
    """Shadow or canary mode (the path's last part) for a loaded version: ``version`` and ``share`` (0-1)."""
    found, name = management(request), model_name(request)
    params = await read_parameters(request, {"version", "share"})
    version = text(params.get("version"), "version")
    if version is None:
        raise RefusedError(400, "request", "'version' is required: the loaded version to run beside the serving one")
    share = margin(params.get("share", 1.0), "share")
    return JSONResponse(await found.lifecycle.set_mode(name, request.url.path.rsplit("/", 1)[1], version,
                                                       share))


@answers_refusals
async def statistics(request: Request) -> Response:
    """Triton's statistics: every loaded version of every model, of one model, or of one version."""
    try:
        answer = model_statistics(serving(request).registry, request.path_params.get("model"),
                                  request.path_params.get("version"))
    except KeyError as exc:
        raise RefusedError(404, "model", str(exc.args[0])) from None
    return JSONResponse(answer)


def model_statistics(registry: ModelRegistry, name: str | None, version: str | None) -> dict[str, Any]:
    """The statistics answer, for REST and gRPC alike: of every loaded version of every model (no ``name``), of
    one model, or of one ``version`` of it (its hash or Triton's integer name).

    Raises:
        KeyError: with the reason, for a model or version not loaded here.
    """
    if not name:
        return registry.stats.model_stats({n: list(registry.versions[n]) for n in registry.backends})
    found = registry.get(version_key(name, version) if version else name)
    return registry.stats.model_stats({name: [found.version] if version else list(registry.versions[name])})


REPOSITORY = "/v2/repository/models/{model}"
ROUTES = [
    Route("/v2/models/stats", statistics),
    Route("/v2/models/{model}/stats", statistics),
    Route("/v2/models/{model}/versions/{version}/stats", statistics),
    Route("/v2/repository/index", repository_index, methods=["POST"]),
    Route(f"{REPOSITORY}/load", load, methods=["POST"]),
    Route(f"{REPOSITORY}/unload", unload, methods=["POST"]),
    Route(f"{REPOSITORY}/promote", promote, methods=["POST"]),
    Route(f"{REPOSITORY}/rollback", rollback, methods=["POST"]),
    Route(f"{REPOSITORY}/shadow", set_mode, methods=["POST"]),
    Route(f"{REPOSITORY}/canary", set_mode, methods=["POST"]),
]
