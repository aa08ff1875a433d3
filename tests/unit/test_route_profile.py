"""benchmark.route_profile without a server: py-spy's raw stacks sorted by the code they were in, and the report."""

from __future__ import annotations

import pytest

from benchmark import route_profile

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product

SITE = "/venv/lib/python3.11/site-packages"
RAW = "\n".join([
    "Server.run (uvicorn/server.py:86);EpollSelector.select (/usr/lib/python3.11/selectors.py:468) 40",
    f"ServerErrorMiddleware.__call__ ({SITE}/starlette/middleware/errors.py:164) 10",
    "infer (/work/repo/service/v2.py:276);dumps (/usr/lib/python3.11/json/__init__.py:238) 6",
    "Timing.add (/work/repo/service/stats.py:50) 4",
    f"MmapedValue.inc ({SITE}/prometheus_client/values.py:115) 3",
    "_write_to_self (/usr/lib/python3.11/asyncio/selector_events.py:139) 2",
    f"Thread._bootstrap (/usr/lib/python3.11/threading.py:1002);Session.run ({SITE}/onnxruntime/x.py:395) 99",
    "mystery (somewhere) 1",
    "",
])


def test_the_event_loop_samples_are_sorted_by_group_and_the_model_thread_and_idle_wait_left_out():
    groups, idle = route_profile.event_loop_samples(RAW)
    assert idle == 40
    assert groups == {
        "Starlette (apps, routers, request and response objects)": 10,
        "JSON encoding and decoding": 6,
        "the endpoint (read, parse, answer, statistics)": 4,
        "Prometheus series": 3,
        "HTTP server and event loop (uvicorn, asyncio, the socket)": 2,
        route_profile.OTHER: 1,
    }


def test_the_report_gives_microseconds_per_request_before_and_after():
    groups, idle = route_profile.event_loop_samples(RAW)
    row = {"rps": 1000.0, "p99_ms": 9.0, "requests": 100, "samples": dict(groups), "idle_samples": idle}
    us = route_profile.per_request_us(row)
    assert us["JSON encoding and decoding"] == pytest.approx(6 / route_profile.RATE_HZ / 100 * 1e6)
    report = {"command": "python -m benchmark.route_profile", "env": {"cpu": "Test CPU", "cores": 2},
              "route": "v2 binary", "connections": 16, "rate_hz": route_profile.RATE_HZ, "seconds": 12.0,
              "baseline": "a" * 40,
              "rows": [{"name": "before", "code": "commit aaaaaaaaaaaa", **row},
                       {"name": "after", "code": "this checkout", **row}]}
    text = route_profile.render(report)
    json_us, total_us = 6 / route_profile.RATE_HZ / 100 * 1e6, 26 / route_profile.RATE_HZ / 100 * 1e6
    assert f"| JSON encoding and decoding | {json_us:,.0f} | {json_us:,.0f} |" in text
    assert f"| **total** | **{total_us:,.0f}** | **{total_us:,.0f}** |" in text
    assert "| requests/s while sampled | 1,000 | 1,000 |" in text and "Without the sampler" not in text
