"""benchmark.keys: the baseline it extracts, the three servers it compares, the spread it reports."""

from __future__ import annotations

import pytest

from benchmark import keys

pytestmark = pytest.mark.lab


def test_the_baseline_is_the_named_revision_s_own_files(tmp_path):
    folder, commit = keys.extract("HEAD", tmp_path / "baseline")
    assert len(commit) == 40 and (folder / "service" / "service.py").is_file()
    assert not (folder / ".venv").exists()  # the revision's tracked files only


def test_the_keyed_server_sends_its_key_and_the_others_send_none(tmp_path):
    keys_off, keys_on, baseline = keys.cost_servers(tmp_path, "0" * 40, "fsk_k", "id=line")
    assert {r.label for r in keys_off.routes} == set(keys.COST_ROUTES)
    assert all(r.header == "Authorization: Bearer fsk_k" for r in keys_on.routes)
    assert all(not r.header for r in (*keys_off.routes, *baseline.routes))
    assert keys_on.env["FASHION_API_KEYS"] == "id=line" and "FASHION_API_KEYS" not in keys_off.env
    command = baseline.command(tmp_path / "bin", 3120, tmp_path)
    assert command[:2] == ["env", f"PYTHONPATH={tmp_path}"] and command[command.index("--working-dir") + 1] == \
        str(tmp_path)


def test_spread_is_the_largest_over_the_smallest_repetition():
    rows = [{"peer": "a", "route": "r", "connections": 1, "rps": rps} for rps in (100.0, 120.0, 110.0)]
    rows += [{"peer": "a", "route": "r", "connections": 16, "rps": rps} for rps in (200.0, 200.0, 300.0)]
    assert keys.spreads(rows) == {"a": (1.2 + 1.5) / 2}
