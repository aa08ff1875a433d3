"""deploy/prometheus's alert rules under ``promtool test rules``, and deploy/grafana's dashboard, checked against the
series the service serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "fashion-serve.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian's prometheus "
                                                              "package; .ci/run installs it)")


def served_series() -> set[str]:
    """Every series name the service's modules create (drift, telemetry, batcher), and BentoML's request counter."""
    from service import batcher, drift, predictions, telemetry

    names = {"bentoml_service_request_total"}
    for module in (batcher, drift, predictions, telemetry):
        for metric in module.metrics().values():
            kind = metric._type
            base = metric._name
            names |= ({f"{base}_bucket", f"{base}_sum", f"{base}_count"} if kind == "histogram"
                      else {f"{base}_total"} if kind == "counter" else {base})
    return names


def names_in(expr: str) -> set[str]:
    return {name for name in re.findall(r"\b([a-z_]+_[a-z_]+)\b(?=\s*[{\[)]|\s*(?:>|<|and|$))", expr)
            if name.startswith(("fashion_", "bentoml_"))}


@needs_promtool
def test_the_rules_are_valid_and_their_unit_tests_pass():
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        out = subprocess.run([PROMTOOL, *command], cwd=RULES, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr


def test_every_rule_names_series_the_service_serves():
    rules = [rule for group in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= {"FashionNotClothingDrift", "FashionClassMixDrift",
                                                 "FashionConfidenceDrop"}
    served = served_series()
    for rule in rules:
        used = names_in(rule["expr"])
        assert used and used <= served, (rule["alert"], used - served)


def test_the_dashboard_is_well_formed_and_queries_served_series():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    served = served_series()
    for panel in panels:
        assert panel["type"] in ("timeseries", "stat", "gauge", "bargauge") and panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        assert panel["targets"] and len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            used = {n for n in re.findall(r"\b(fashion_[a-z_]+|bentoml_[a-z_]+)\b", target["expr"])}
            assert used and used <= served, (panel["title"], used - served)
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= variables | {"__rate_interval"}
    # Every drift series the alerts use has a panel.
    shown = {n for p in panels for t in p["targets"] for n in re.findall(r"fashion_drift_\w+", t["expr"])}
    assert {"fashion_drift_not_clothing_ratio", "fashion_drift_class_js_divergence_bits",
            "fashion_drift_mean_confidence_ratio"} <= shown
