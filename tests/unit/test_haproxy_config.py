"""The haproxy configuration tests/scale_out.py writes: valid for haproxy itself, and routed as documented."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.scale_out import Replica, haproxy_config

pytestmark = pytest.mark.lab  # tests of the lab (benchmark/) or of the docs, not of the product


def test_haproxy_accepts_the_config_and_tasks_stick_to_one_replica(tmp_path):
    replicas = [Replica("r0", 3000, 3001), Replica("r1", 3010, 3011)]
    text = haproxy_config(8080, replicas, tmp_path)
    backends = {block.split("\n", 1)[0]: block for block in text.split("\nbackend ")[1:]}
    assert "balance source" in backends["tasks"] and "balance roundrobin" in backends["replicas"]
    # A classification closed unanswered is resent (idempotent); a task submit is not.
    assert "retry-on conn-failure empty-response" in backends["replicas"] and "retry-on" not in backends["tasks"]
    # Checked once, on the probe port; the tasks backend follows those checks.
    assert "server r1 127.0.0.1:3010 check port 3011" in backends["replicas"]
    assert "server r1 127.0.0.1:3010 track replicas/r1" in backends["tasks"]
    assert "use_backend tasks if { path_beg /classify_dataset/ }" in text
    haproxy = shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run does this): syntax not checked")
    (tmp_path / "haproxy.cfg").write_text(text)
    check = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
