"""``python -m tests.timing``: run each test tier once, timed, and write results/test-suite.md.

The README's statement of how long ``make test`` takes is read from that file, not typed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "e2e")


def time_tier(tier: str) -> tuple[float, str]:
    """Wall seconds of ``pytest tests/<tier>`` and pytest's last line (counts of passed, failed, ...)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/{tier}"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return time.perf_counter() - start, lines[-1].strip("= ") if lines else f"exit {proc.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.timing", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "test-suite.md", help="the report")
    args = parser.parse_args(argv)
    rows = [(tier, *time_tier(tier)) for tier in TIERS]
    total = sum(seconds for _, seconds, _ in rows)
    text = [f"# Test suite duration ({datetime.now(UTC):%Y-%m-%d}, {platform.node()}, {os.cpu_count()} CPUs)", "",
            "Each tier run once by `python -m tests.timing` (`make test-timing`), one after the other;",
            "the machine may have been shared, so treat this as one sample.", "",
            "| tier | seconds | minutes | pytest |", "| --- | --- | --- | --- |"]
    text += [f"| {tier} | {seconds:.0f} | {seconds / 60:.1f} | {summary} |" for tier, seconds, summary in rows]
    text += [f"| all | {total:.0f} | {total / 60:.1f} | |", ""]
    args.out.write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
