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
    InferenceLane,
    JSONAnswer,
    TrafficMetrics,
    choose_event_loop,
    use_deadline_middleware,
    use_lean_traffic_metrics,
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
    assert out.stdout.split()[-7:] == ["RequestTelemetry", "KeyGate", "TrafficMetrics", "DeadlineMiddleware",
                                       "AdmissionMiddleware", "InferenceLane", "False"], out.stderr[-2000:]


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
    """Request telemetry (seam 7), then the key gate (seam 6) first of all; then BentoML's metrics (seam 8), the
    deadline, admission and the inference lane (seam 4); BentoML's tracing layer, the task routes, its context
    middleware and router behind them, where inference never goes: the order service.seams.install writes."""
    names = front(app)
    assert names[:6] == ["RequestTelemetry", "KeyGate", "TrafficMetrics", "DeadlineMiddleware",
                         "AdmissionMiddleware", "InferenceLane"]
    assert names[6:] == ["OpenTelemetryMiddleware", "TaskMiddleware", "ContextMiddleware"]


def test_putting_the_front_in_order_twice_changes_nothing(app):
    from service.seams import FRONT, put_first
    from service.service import FashionClassifier

    put_first(*FRONT)
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


def test_the_lane_hands_inference_to_the_endpoint_other_v2_paths_to_the_v2_app_and_the_rest_to_bentomls():
    reached = []

    def recorder(name):
        async def app(scope, receive, send):
            reached.append((name, scope.get("path"), scope.get("path_params")))
        return app

    lane = InferenceLane(recorder("bentoml"), v2=recorder("v2"), infer=recorder("infer"))
    for method, path in [("POST", "/v2/models/onnx-torch/infer"), ("POST", "/v2/models/onnx-tf/versions/abc/infer"),
                         ("GET", "/v2/models/onnx-torch/infer"), ("POST", "/v2/models/onnx-torch/versions//infer"),
                         ("POST", "/v2/models//infer"), ("POST", "/v2/models/onnx-torch/x/infer"), ("GET", "/v2"),
                         ("POST", "/v2/repository/index"), ("POST", "/v2x"), ("POST", "/classify"), ("GET", "/")]:
        asyncio.run(lane({"type": "http", "method": method, "path": path}, None, None))
    asyncio.run(lane({"type": "lifespan"}, None, None))
    assert reached == [
        ("infer", "/v2/models/onnx-torch/infer", {"model": "onnx-torch"}),
        ("infer", "/v2/models/onnx-tf/versions/abc/infer", {"model": "onnx-tf", "version": "abc"}),
        ("v2", "/v2/models/onnx-torch/infer", None), ("v2", "/v2/models/onnx-torch/versions//infer", None),
        ("v2", "/v2/models//infer", None), ("v2", "/v2/models/onnx-torch/x/infer", None), ("v2", "/v2", None),
        ("v2", "/v2/repository/index", None), ("bentoml", "/v2x", None), ("bentoml", "/classify", None),
        ("bentoml", "/", None), ("bentoml", None, None)]


# 8. BentoML's request metrics, looked up once.

def test_bentoml_builds_the_lean_traffic_metrics(app, monkeypatch):
    from bentoml._internal.server.http import instruments

    assert instruments.RunnerTrafficMetricsMiddleware is TrafficMetrics
    assert TrafficMetrics.bentoml_class.__name__ == "RunnerTrafficMetricsMiddleware"
    assert TrafficMetrics.bentoml_class.__module__ == instruments.__name__
    monkeypatch.setattr(instruments, "RunnerTrafficMetricsMiddleware", TrafficMetrics)
    assert use_lean_traffic_metrics() and TrafficMetrics.bentoml_class is not TrafficMetrics


def test_the_lean_traffic_metrics_count_what_bentomls_count(app):
    """The same requests through BentoML's middleware and through TrafficMetrics move the same series by the same
    amounts (each on a registry and namespace of its own: the tests' Prometheus values may live in shared files;
    durations compared by count)."""
    from bentoml._internal.context import server_context
    from prometheus_client import CollectorRegistry

    server_context.service_routes = []

    async def answer(scope, receive, send):
        status = 404 if scope["path"] == "/missing" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b"y"})

    def samples(middleware_class, namespace):
        registry = CollectorRegistry()
        layer = middleware_class(answer, namespace=namespace, skip_paths=["/livez"])
        bentoml = layer.bentoml if isinstance(layer, TrafficMetrics) else layer
        client = type("Client", (), {"Histogram": lambda self, **kw: prom.Histogram(registry=registry, **kw),
                                     "Counter": lambda self, **kw: prom.Counter(registry=registry, **kw),
                                     "Gauge": lambda self, **kw: prom.Gauge(registry=registry, **kw),
                                     "Summary": lambda self, **kw: prom.Summary(registry=registry, **kw)})()
        bentoml._setup(metrics_client=client, duration_buckets=(0.1, 1.0))

        async def sent(message):
            pass

        for path in ["/classify", "/classify", "/missing", "/livez", "/metrics"]:
            asyncio.run(layer({"type": "http", "path": path}, None, sent))
        return {(s.name.removeprefix(namespace), tuple(sorted(s.labels.items()))): s.value
                for metric in registry.collect() for s in metric.samples
                if not s.name.endswith(("_sum", "_created", "_timestamp_seconds"))}

    import prometheus_client as prom

    ours, theirs = samples(TrafficMetrics, "ours"), samples(TrafficMetrics.bentoml_class, "theirs")
    assert ours == theirs
    assert ours[("_request_total", (("endpoint", "/classify"), ("http_response_code", "200"), ("runner_name", "None"),
                                    ("service_name", ""), ("service_version", "not available")))] == 2


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
