"""The GPU resource switch: BentoML's own configuration override, checked in a fresh interpreter (BentoML reads its
configuration once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GPU_SWITCH = 'services."fashion-classifier".resources.gpu=1'  # as docs/deploy.md and deploy/kubernetes give it
# The service's resources as BentoML's configuration holds them (its "services" key exists only once overridden).
PROBE = ("import json; from service.service import FashionClassifier as S; "
         "from bentoml._internal.configuration.containers import BentoMLContainer as C; "
         "print(json.dumps(C.config.get().get('services', {}).get(S.name, {}).get('resources')))")


def resources_with(options: str | None) -> dict | None:
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_CONFIG_OPTIONS"}
    if options:
        env["BENTOML_CONFIG_OPTIONS"] = options
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_switch_asks_bentoml_for_one_gpu():
    assert resources_with(GPU_SWITCH) == {"gpu": 1}


def test_without_the_switch_no_gpu_is_asked_for():
    assert not (resources_with(None) or {}).get("gpu")


def test_the_manifest_documents_the_same_switch():
    assert GPU_SWITCH in (REPO / "deploy" / "kubernetes" / "fashion-serve.yaml").read_text()
