"""Request ids, the log filter, drift windows, the prediction log and spans, without a service (service.telemetry,
service.drift, service.predictions, service.tracing)."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from fashion.contract import NUM_CLASSES
from service import telemetry
from service.drift import DriftMonitor, Reference, Window, js_divergence_bits
from service.predictions import PredictionLog, PredictionLogConfig
from service.telemetry import RequestContext, RequestIdFilter, read_ids, with_request_id

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_a_sent_request_id_is_kept():
    assert read_ids([(b"x-request-id", b"order-42.a/b")]) == ("order-42.a/b", None)


def test_a_traceparent_gives_its_trace_id_and_is_kept_for_the_spans():
    request_id, parent = read_ids([(b"traceparent", TRACEPARENT.encode())])
    assert request_id == TRACE_ID and parent == TRACEPARENT.encode()
    assert read_ids([(b"x-request-id", b"mine"), (b"traceparent", TRACEPARENT.encode())])[0] == "mine"


@pytest.mark.parametrize("sent", [b"two words", b"line\nbreak", b'quote"', b"x" * 129, b""])
def test_an_unsafe_request_id_is_replaced(sent):
    request_id, _ = read_ids([(b"x-request-id", sent)])
    assert request_id != sent.decode() and len(request_id) == 32


@pytest.mark.parametrize("parent", [f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-{TRACE_ID}-{'0' * 16}-01",
                                    "01-zz-00f067aa0ba902b7-01", "garbage"])
def test_an_invalid_traceparent_is_ignored(parent):
    request_id, kept = read_ids([(b"traceparent", parent.encode())])
    assert kept is None and request_id != TRACE_ID


def test_made_ids_are_unique_across_100000_requests():
    ids = [read_ids([])[0] for _ in range(100_000)]
    assert len(set(ids)) == len(ids)


def test_error_bodies_get_the_request_id():
    assert json.loads(with_request_id(b'{"error": "bad"}', "r1")) == {"error": "bad", "request_id": "r1"}
    assert json.loads(with_request_id(b'[{"error": "bad"}]', "r1")) == [{"error": "bad", "request_id": "r1"}]
    assert with_request_id(b"not json", "r1") is None


def test_log_lines_written_during_a_request_carry_its_id():
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(handler.format(record))
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("tests.telemetry")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside %d", 1)
        token = telemetry.CURRENT.set(RequestContext("req-7", 0.0))
        try:
            logger.warning("inside %d", 2)
        finally:
            telemetry.CURRENT.reset(token)
    finally:
        logger.removeHandler(handler)
    assert records == ["outside 1", "inside 2 [request_id=req-7]"]


def test_the_log_filter_is_installed_once_per_handler():
    logger = logging.getLogger("tests.telemetry.install")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        telemetry.install_log_filter(("tests.telemetry.install",))
        telemetry.install_log_filter(("tests.telemetry.install",))
        assert sum(isinstance(f, RequestIdFilter) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)


# Drift.

MANIFEST = {"source_test_accuracy": 0.9, "ood": {"test_tpr": 0.95}}


def backend(name: str = "onnx", version: str = "v1", threshold: float = 0.5) -> SimpleNamespace:
    return SimpleNamespace(name=name, version=version, manifest=MANIFEST, temperature=1.0,
                           detector=SimpleNamespace(threshold=threshold))


def logits_for(classes: np.ndarray, margin: float = 10.0) -> np.ndarray:
    logits = np.zeros((len(classes), NUM_CLASSES), np.float32)
    logits[np.arange(len(classes)), classes] = margin
    return logits


def test_the_reference_comes_from_the_manifest():
    reference = Reference.of(MANIFEST)
    assert reference.mean_confidence == 0.9 and reference.not_clothing == pytest.approx(0.05)
    assert reference.class_mix.sum() == pytest.approx(1) and len(set(reference.class_mix)) == 1


def test_js_divergence_is_zero_for_the_same_mix_and_one_for_disjoint_mixes():
    uniform = np.full(NUM_CLASSES, 0.1)
    assert js_divergence_bits(uniform, uniform) == pytest.approx(0, abs=1e-12)
    assert js_divergence_bits(np.eye(NUM_CLASSES)[0], np.eye(NUM_CLASSES)[1]) == pytest.approx(1)


def test_the_window_keeps_only_the_last_images():
    window = Window(4)
    window.add(np.array([1, 1, 1]), np.full(3, 0.5, np.float32), np.array([0, 0, 0]))
    window.add(np.array([2, 2, 2]), np.full(3, 1.0, np.float32), np.array([1, 1, 1]))
    summary = window.summary()
    assert summary["images"] == 4 and summary["class_mix"][[1, 2]].tolist() == [0.25, 0.75]
    assert summary["mean_confidence"] == pytest.approx(0.875) and summary["not_clothing"] == 0.75


def test_drift_follows_the_traffic_and_comes_back():
    monitor = DriftMonitor(window=100, interval_s=60)
    model = backend()
    clothing = np.arange(100) % NUM_CLASSES
    monitor.record(model, logits_for(clothing), np.full(100, 0.9, np.float32))
    calm = monitor.refresh()[("onnx", "v1")]
    assert calm["class_js"] == pytest.approx(0, abs=1e-9) and calm["not_clothing_shift"] == pytest.approx(-0.05)
    monitor.record(model, logits_for(np.full(100, 3), margin=0.5), np.full(100, 0.1, np.float32))
    drifted = monitor.refresh()[("onnx", "v1")]
    assert drifted["class_js"] > 0.5 and drifted["not_clothing_shift"] == pytest.approx(0.95)
    assert drifted["confidence_shift"] < -0.5
    monitor.record(model, logits_for(clothing), np.full(100, 0.9, np.float32))
    assert monitor.refresh()[("onnx", "v1")]["not_clothing_shift"] == pytest.approx(-0.05)


def test_unscored_answers_leave_the_not_clothing_share_alone():
    monitor = DriftMonitor(window=10, interval_s=60)
    monitor.record(backend(), logits_for(np.arange(10)), None)
    summary = monitor.refresh()[("onnx", "v1")]
    assert summary["not_clothing"] is None and "not_clothing_shift" not in summary


def test_many_small_answers_fold_in_as_one_in_their_order():
    """Thousands of one-image answers queued between two refreshes, scored and not, newest last."""
    monitor = DriftMonitor(window=1000, interval_s=60)
    model = backend()
    for i in range(3000):
        scores = None if i % 3 == 0 else np.array([0.1 if i % 2 else 0.9], np.float32)
        monitor.record(model, logits_for(np.array([i % NUM_CLASSES])), scores)
    summary = monitor.refresh()[("onnx", "v1")]
    window = monitor.windows[("onnx", "v1")][0]
    last = np.arange(2000, 3000)
    expected_flags = np.where(last % 3 == 0, -1, last % 2)
    assert summary["images"] == 1000 and np.roll(window.flagged, -window.next).tolist() == expected_flags.tolist()
    assert np.roll(window.classes, -window.next).tolist() == (last % NUM_CLASSES).tolist()
    assert summary["not_clothing"] == pytest.approx(expected_flags[expected_flags >= 0].mean())


# The prediction log.

def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_sampling_rate_is_honoured_within_one_point(tmp_path):
    config = PredictionLogConfig(str(tmp_path / "predictions.jsonl"), sample=0.1, seed=0)
    log = PredictionLog(config)
    requests = 20_000
    for i in range(requests):
        log.record(f"r{i}", backend(), logits_for(np.array([i % NUM_CLASSES])), None, None)
    log.close()
    lines = read_lines(tmp_path / "predictions.jsonl")
    assert len(lines) == log.sampled
    assert abs(len(lines) / requests - config.sample) <= 0.01


def test_a_record_has_every_field_and_pixels_only_when_asked(tmp_path):
    pixels = np.arange(2 * 28 * 28).reshape(2, 28, 28).astype(np.uint8)
    for asked in (False, True):
        path = tmp_path / f"{asked}.jsonl"
        log = PredictionLog(PredictionLogConfig(str(path), sample=1.0, pixels=asked))
        log.record("req-1", backend(), logits_for(np.array([3, 7])), np.array([0.9, 0.1], np.float32), pixels)
        log.close()
        first, second = read_lines(path)
        assert {k: first[k] for k in ("request_id", "backend", "version", "class_id", "label", "image")} == {
            "request_id": "req-1", "backend": "onnx", "version": "v1", "class_id": 3, "label": "Dress", "image": 0}
        assert second["class_id"] == 7 and 0 < first["confidence"] <= 1 and second["ood_score"] == pytest.approx(0.1)
        assert first["time"].endswith("Z")
        assert ("pixels" in first) is asked and (not asked or np.array_equal(second["pixels"], pixels[1]))


def test_the_log_rotates_by_size_and_loses_nothing(tmp_path):
    path = tmp_path / "predictions.jsonl"
    log = PredictionLog(PredictionLogConfig(str(path), sample=1.0, max_bytes=4096, backups=1000))
    for i in range(500):
        log.record(f"r{i}", backend(), logits_for(np.array([i % NUM_CLASSES])), None, None)
    log.close()
    files = sorted(tmp_path.glob("predictions.jsonl*"))
    assert len(files) > 2 and all(f.stat().st_size <= 4096 for f in files)
    ids = {line["request_id"] for f in files for line in read_lines(f)}
    assert ids == {f"r{i}" for i in range(500)}


def test_recording_never_waits_for_the_writer(tmp_path):
    """A writer stuck on its disk holds up no answer: the records queue (and are written once it moves)."""
    log = PredictionLog(PredictionLogConfig(str(tmp_path / "p.jsonl"), sample=1.0))
    stuck = threading.Event()
    emit = log.handler.emit
    log.handler.emit = lambda record: (stuck.wait(), emit(record))
    for i in range(1000):
        log.record(f"r{i}", backend(), logits_for(np.array([1])), None, None)
    assert log.sampled == 1000
    stuck.set()
    log.close()
    assert len(read_lines(tmp_path / "p.jsonl")) == 1000


# Traces.

def finished_request(traceparent: bytes | None = None) -> RequestContext:
    ctx = RequestContext("req-9", 1.0, traceparent)
    ctx.decoded, ctx.answered, ctx.queue_s, ctx.compute_s = 1.001, 1.006, 0.002, 0.003
    ctx.backend, ctx.version = "onnx", "v1"
    return ctx


def test_an_answered_request_becomes_a_span_per_stage_under_the_callers_trace():
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service.tracing import Tracer

    exporter = InMemorySpanExporter()
    tracer = Tracer(SimpleSpanProcessor(exporter))
    tracer.export(finished_request(TRACEPARENT.encode()), 200, 1.008)
    tracer.export(RequestContext("refused", 1.0), 429, 1.001)  # no model answered: no spans
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert sorted(spans) == ["decode", "encode", "model", "queue", "request"]
    root = spans["request"]
    assert format(root.context.trace_id, "032x") == TRACE_ID and root.attributes["fashion.request_id"] == "req-9"
    assert all(spans[n].parent.span_id == root.context.span_id for n in telemetry.STAGES)
    durations = {n: (spans[n].end_time - spans[n].start_time) / 1e9 for n in spans}
    assert durations["request"] == pytest.approx(0.008, abs=1e-6)
    assert durations["model"] == pytest.approx(0.003, abs=1e-6) and durations["queue"] == pytest.approx(0.002, abs=1e-6)
    tracer.close()


def test_spans_reach_an_otlp_collector(tmp_path):
    """The OTLP/HTTP exporter against a collector stand-in on 127.0.0.1 that decodes what it receives."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from service.tracing import otlp_tracer

    received: list[str] = []
    arrived = threading.Event()

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest.FromString(body)
            received.extend(span.name for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            arrived.set()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracer = otlp_tracer(f"http://127.0.0.1:{server.server_port}/v1/traces")
        tracer.export(finished_request(), 200, 1.008)
        tracer.close()  # flushes the batch
        assert arrived.wait(30)
    finally:
        server.shutdown()
    assert sorted(received) == ["decode", "encode", "model", "queue", "request"]
