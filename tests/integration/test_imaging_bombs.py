"""The image decoder under attack, in processes of its own: coverage-guided fuzzing, and each bomb of
tests/unit/test_imaging_security.py decoded with its time and peak memory measured.

Integration tier, not unit: each case starts an interpreter, and the fuzzer runs for FUZZ_SECONDS.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_imaging_security import BOMB_MEGABYTES, BOMB_SECONDS, BOMBS, FUZZ_SECONDS, REPO


def test_fuzzer_finds_no_crash(tmp_path):
    """libFuzzer for FUZZ_SECONDS: any exception but ImageError, a slow or a memory-hungry input fails."""
    pytest.importorskip("atheris", reason="the fuzz harness needs atheris (pip install -e '.[dev]')")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # libFuzzer's memory figure is the peak RSS from getrusage, and a child inherits this process's peak
    # across fork and exec: after the suite has loaded TensorFlow that alone is about 2 GB. So the limit
    # is 1 GB above what this process has already reached.
    rss_limit_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + 1024
    command = [sys.executable, "-m", "tests.fuzz_imaging", f"-max_total_time={FUZZ_SECONDS}", "-timeout=10",
               f"-rss_limit_mb={rss_limit_mb}", "-seed=1", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/",
               str(corpus)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=FUZZ_SECONDS + 60)
    output = proc.stdout + proc.stderr
    crashes = sorted(str(p) for p in tmp_path.glob("*") if p.name.split("-")[0] in ("crash", "timeout", "oom"))
    runs = re.search(r"Done (\d+) runs in (\d+) second", output)
    if runs:
        print(f"fuzz: {runs[1]} runs in {runs[2]} s ({int(runs[1]) / max(1, int(runs[2])):.0f}/s)")
    assert proc.returncode == 0, (f"fuzzer exit {proc.returncode}; crash inputs {crashes}; replay with "
                                  f"`python -m tests.fuzz_imaging <input>`\n{output[-4000:]}")
    assert runs, output[-2000:]


# --- only the bytes choose the parser, and only an allowed one ----------------------------------------------

# Formats this Pillow can write (and mostly read) that the service does not accept. EPS matters most: Pillow
# reads one by running Ghostscript on it.
MEASURE = """
import json, sys, time
from fashion.imaging import ImageError, decode_image
from fashion.samples import sample_paths

def memory_kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

decode_image(sample_paths()[0].read_bytes())  # Pillow's lazy imports belong to the baseline, not to the bomb
data = open(sys.argv[1], "rb").read()
try:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # restart VmHWM at the current size
except OSError:
    pass  # then the peak may include startup: the bound is checked conservatively
before = memory_kb("VmRSS")
start = time.perf_counter()
try:
    decode_image(data)
    status = 200
except ImageError as exc:
    status = exc.status
seconds = time.perf_counter() - start
print(json.dumps({"status": status, "seconds": seconds, "megabytes": (memory_kb("VmHWM") - before) / 1024}))
"""


def measure(data: bytes, folder: Path) -> dict:
    """Decode ``data`` in a fresh interpreter: status, seconds and peak memory above its own baseline (MB)."""
    path = folder / "input.bin"
    path.write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"decode_image crashed (not an ImageError):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from Linux's /proc")
@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_is_cheap(name, tmp_path):
    build, outcomes = BOMBS[name]
    data = build()
    result = measure(data, tmp_path)
    print(f"{name}: {len(data):,} bytes -> {result['status']} in {result['seconds']:.3f} s, "
          f"+{result['megabytes']:.1f} MB")
    assert result["status"] in outcomes
    assert result["seconds"] < BOMB_SECONDS
    assert result["megabytes"] < BOMB_MEGABYTES
