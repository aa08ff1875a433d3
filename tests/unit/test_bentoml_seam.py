"""Each seam of service.seams, pinned against the BentoML and uvicorn that bentofile.yaml pins (bentoml 1.4.40).

An upgrade changes the pins, runs this file, and reads service.seams where a test fails.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.seams import (
    DEFAULT_LOOP,
    DeadlineMiddleware,
    JSONAnswer,
    V2Shortcut,
    choose_event_loop,
    use_deadline_middleware,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def app():
    """The service's app as BentoML builds it for a worker (not started: no model is loaded)."""
    from service.service import FashionClassifier

    return FashionClassifier.to_asgi()


def front(app) -> list[str]:
    """The names of the middlewares BentoML put in front of its router, outermost first."""
    return [middleware.cls.__name__ for middleware in app.user_middleware]


def test_the_seams_are_checked_against_the_pinned_bentoml():
    packages = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    pinned = next(spec.split("==")[1].split()[0] for spec in packages if spec.startswith("bentoml=="))
    assert importlib.metadata.version("bentoml") == pinned == "1.4.40"


def test_importing_the_seams_changes_nothing():
    """The seams are installed by service.service's one call, never as a side effect of an import."""
    code = ("import service.seams\nfrom bentoml._internal.server.http import traffic\nfrom uvicorn import config\n"
            "from _bentoml_sdk.service.factory import Service\n"
            "print(traffic.TimeoutMiddleware.__name__, config.LOOP_FACTORIES['auto'], "
            "getattr(Service.to_asgi, 'first', None))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["TimeoutMiddleware", "uvicorn.loops.auto:auto_loop_factory", "None"], out.stderr


def test_installing_the_seams_leaves_the_app_builder_unimported():
    """``bentoml serve`` imports the service only to start a worker: the module that builds the app (heavy) is the
    worker's to import, so the seams must not pull it in (seam 6 wraps ``Service.to_asgi`` for that reason)."""
    code = ("import sys, service.service\nfrom _bentoml_sdk.service.factory import Service\n"
            "print(*(cls.__name__ for cls in Service.to_asgi.first), '_bentoml_impl.server.app' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[-3:] == ["RequestTelemetry", "KeyGate", "False"], out.stderr[-2000:]


# 1. The deadline.

def test_use_deadline_middleware_replaces_bentomls_timeout_middleware(monkeypatch):
    from bentoml._internal.server.http import traffic

    monkeypatch.setattr(traffic, "TimeoutMiddleware", traffic.TimeoutMiddleware)
    assert use_deadline_middleware() and traffic.TimeoutMiddleware is DeadlineMiddleware


def test_bentoml_builds_the_deadline_with_the_traffic_timeout(app):
    from service.service import FashionClassifier

    deadlines = [m for m in app.user_middleware if m.cls is DeadlineMiddleware]
    assert len(deadlines) == 1 and "TimeoutMiddleware" not in front(app)
    assert deadlines[0].kwargs["timeout"] == FashionClassifier.config["traffic"]["timeout"]


def test_the_front_of_the_app_is_in_order(app):
    """Request telemetry (seam 7), then the key gate (seam 6) first of all; metrics and the deadline outside, then
    admission, the task routes and the v2 shortcut, then BentoML's context middleware and router: the order
    service.seams.install writes."""
    names = front(app)
    assert names[:2] == ["RequestTelemetry", "KeyGate"] and names.count("KeyGate") == 1
    start = names.index("DeadlineMiddleware")
    assert names[start:start + 5] == ["DeadlineMiddleware", "AdmissionMiddleware", "TaskMiddleware", "V2Shortcut",
                                      "ContextMiddleware"]
    assert names.index("RunnerTrafficMetricsMiddleware") < start


def test_putting_the_key_gate_first_twice_changes_nothing(app):
    from service.admission import KeyGate
    from service.seams import put_first
    from service.service import FashionClassifier
    from service.telemetry import RequestTelemetry

    put_first(RequestTelemetry, KeyGate)
    assert front(FashionClassifier.to_asgi()) == front(app)


# 2. The event loop.

def test_uvicorn_builds_its_loop_from_the_auto_factory(monkeypatch):
    """BentoML's worker builds uvicorn's Config without naming a loop (outside Windows), so "auto" decides."""
    import uvicorn
    from _bentoml_impl.worker import service as worker
    from uvicorn import config

    assert re.search(r"uvicorn\.Config\((?:(?!\)\n).)*\bloop=", inspect.getsource(worker), re.S) is None
    monkeypatch.setitem(config.LOOP_FACTORIES, "auto", config.LOOP_FACTORIES["auto"])
    assert choose_event_loop(None) == DEFAULT_LOOP == "asyncio"
    built = uvicorn.Config(app=None)
    assert built.loop == "auto"
    loop = built.get_loop_factory()()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_event_loop_choices(monkeypatch):
    from uvicorn import config

    monkeypatch.setitem(config.LOOP_FACTORIES, "auto", config.LOOP_FACTORIES["auto"])
    before = config.LOOP_FACTORIES["auto"]
    assert choose_event_loop("auto") == "auto" and config.LOOP_FACTORIES["auto"] == before
    assert choose_event_loop("uvloop") == "uvloop" and config.LOOP_FACTORIES["auto"].endswith("uvloop_loop_factory")
    assert choose_event_loop("asyncio") == "asyncio"
    assert config.LOOP_FACTORIES["auto"] == "uvicorn.loops.asyncio:asyncio_loop_factory"
    with pytest.raises(ValueError, match="FASHION_EVENT_LOOP"):
        choose_event_loop("trio")


# 3. The task routes.

def test_bentoml_serves_the_task_routes_the_middleware_answers_for(app):
    from service.task_routes import TASK_ROUTE, TaskMiddleware

    served = {(method, route.path) for route in app.routes for method in (getattr(route, "methods", None) or ())}
    answered = set(TaskMiddleware(app, current=lambda: None).routes)
    # progress is the middleware's own route; every other one it answers or checks is BentoML's.
    assert answered - served == {("GET", f"{TASK_ROUTE}/progress")}


# 4. The v2 shortcut.

def test_the_v2_app_stays_mounted_for_what_the_shortcut_passes_on(app):
    from starlette.routing import Mount

    from service.v2 import app as v2_app

    mounts = {route.path: route.app for route in app.routes if isinstance(route, Mount)}
    assert mounts[""] is v2_app and "/ui" in mounts


def test_the_shortcut_hands_v2_paths_to_the_v2_app_and_every_other_path_to_bentomls():
    reached = []

    def recorder(name):
        async def app(scope, receive, send):
            reached.append((name, scope.get("path")))
        return app

    shortcut = V2Shortcut(recorder("bentoml"), v2=recorder("v2"))
    for path in ["/v2", "/v2/models/onnx-torch/infer", "/v2x", "/classify", "/"]:
        asyncio.run(shortcut({"type": "http", "path": path}, None, None))
    asyncio.run(shortcut({"type": "lifespan"}, None, None))
    assert reached == [("v2", "/v2"), ("v2", "/v2/models/onnx-torch/infer"), ("bentoml", "/v2x"),
                       ("bentoml", "/classify"), ("bentoml", "/"), ("bentoml", None)]


# 5. The JSON answer.

def test_json_answer_is_a_root_model_with_a_fixed_media_type():
    from _bentoml_sdk.io_models import IORootModel

    assert issubclass(JSONAnswer, IORootModel) and JSONAnswer.mime_type() == "application/json"


def test_bentoml_renders_a_json_answer_as_json():
    from _bentoml_impl.serde import JSONSerde

    answer = [{"label": "Ankle boot", "confidence": 0.5}]
    response = asyncio.run(JSONAnswer.to_http_response(answer, JSONSerde()))
    body = b"".join(bytes(chunk) for chunk in response.body_iterator)
    assert response.media_type == "application/json" and json.loads(body) == answer
