"""``python -m tests.timing``: run each test tier once, timed, and write results/test-suite.md.

The file records each tier's wall time, pytest's counts and the id of every test that failed or
errored. The README's sentence on how long the suite takes is generated from the same run (between
the ``test-suite`` markers), so it always says what the file says.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "e2e")
# pytest -rfE prints one short-summary line per failed or errored test: "FAILED tests/x.py::test_y - why".
PROBLEM = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)
README_MARKERS = ("<!-- test-suite: written by python -m tests.timing -->", "<!-- /test-suite -->")


@dataclass(frozen=True)
class TierRun:
    """One tier's run: wall seconds, pytest's last line, and the tests that failed or errored."""

    tier: str
    seconds: float
    summary: str
    problems: tuple[str, ...]


def run_tier(tier: str, select: str | None) -> TierRun:
    """Run ``pytest tests/<tier>`` (only tests matching ``select`` when given) and time it."""
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", f"tests/{tier}"]
    if select:
        command += ["-k", select]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else f"exit {proc.returncode}"
    problems = tuple(f"{kind} {test}" for kind, test in PROBLEM.findall(proc.stdout))
    return TierRun(tier, seconds, summary, problems)


def report(runs: list[TierRun], select: str | None, command: str) -> str:
    """results/test-suite.md: a table of the tiers, then every failed or errored test by name."""
    total = sum(run.seconds for run in runs)
    scope = f", only tests matching `-k {select}`" if select else ""
    text = [f"# Test suite duration ({datetime.now(UTC):%Y-%m-%d}, {platform.node()}, {os.cpu_count()} CPUs)", "",
            f"Written by `{command}` (`make test-timing`): "
            f"each tier run once{scope}, one after the other; the machine may have been shared, so treat this as "
            "one sample.", "",
            "| tier | wall seconds | minutes | pytest |", "| --- | --- | --- | --- |"]
    text += [f"| {run.tier} | {run.seconds:.0f} | {run.seconds / 60:.1f} | {run.summary} |" for run in runs]
    text += [f"| all | {total:.0f} | {total / 60:.1f} | |", ""]
    problems = [problem for run in runs for problem in run.problems]
    text += ["## Failed or errored tests", ""]
    text += [f"- {problem}" for problem in problems] or ["None."]
    return "\n".join(text) + "\n"


def readme_sentence(runs: list[TierRun]) -> str:
    """The README's statement of the suite's duration, from the same figures as the results file."""
    total = sum(run.seconds for run in runs)
    tiers = ", ".join(f"{run.tier} {run.seconds / 60:.1f}" for run in runs)
    failed = sum(len(run.problems) for run in runs)
    outcome = "all passed" if not failed else f"{failed} failed or errored"
    return (f"The tests took {total / 60:.1f} minutes in the last timed run ({tiers} minutes; {outcome}; "
            "[results/test-suite.md](results/test-suite.md), `make test-timing`).")


def update_readme(readme: Path, sentence: str) -> bool:
    """Replace the text between the README's test-suite markers with ``sentence``; False if it has none."""
    text = readme.read_text(encoding="utf-8")
    start, end = README_MARKERS
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda _: f"{start}{sentence}{end}", text), encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.timing", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tiers", nargs="+", choices=TIERS, default=list(TIERS), help="tiers to run, in order")
    parser.add_argument("-k", dest="select", default=None, help="only tests matching this pytest -k expression")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "test-suite.md", help="the report")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md",
                        help="README whose test-suite sentence is rewritten (only for a run of every tier, unfiltered)")
    args = parser.parse_args(argv)
    runs = [run_tier(tier, args.select) for tier in args.tiers]
    command = " ".join(["python -m tests.timing", *(sys.argv[1:] if argv is None else argv)])
    text = report(runs, args.select, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    # A partial run says nothing about the whole suite, so only a full one may speak for it in the README.
    if args.select is None and tuple(args.tiers) == TIERS and update_readme(args.readme, readme_sentence(runs)):
        print(f"updated the test-suite sentence in {args.readme}")
    return 1 if any(run.problems for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
