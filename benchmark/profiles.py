"""The Bento profiles side by side: ``python -m benchmark.profiles`` (``make bento-profiles``).

For each profile (``full``, ``onnx`` and its GPU variant ``onnx-gpu``; tests.bento_check.PROFILES names their
bentofiles), in one run:

* the size of its environment: a fresh venv of only the built Bento's ``requirements.txt`` (``du``), the
  same venv ``make bento-check`` builds;
* the time from ``bentoml serve <bento>`` to ``/readyz`` 200, and the worker's resident memory (``VmRSS``)
  at that moment and after the load below;
* the peers benchmark's figures for the default route (native multipart ``/classify``, one image, the default
  backend, wrk at 1, 16 and 64 connections: benchmark.peers).

Starts alternate between the profiles (``--reps`` each, one server at a time, wrk after every start once its
worker's memory is read); the tables show medians. Among them, BentoML's own floor: in the onnx profile's venv, a
service with one endpoint and no model (:data:`FLOOR_SERVICE`), started the same way; no profile of this service can
be ready sooner.
Writes ``results/bento-profiles-<machine>.{json,md}``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmark.harness import RESULTS, answers_ok, free_port, machine_name, run_wrk, write_results
from benchmark.peers import LEVELS, MULTIPART, medians, one_image, our_routes, venv_size_mb
from fashion.env import environment_stamp
from tests.bento_check import PROFILES, READY_TIMEOUT_S, build_bento, make_venv, profile_backends, serve, wait_ready

READY_POLL_S = 0.05
# The GPU variant runs on the CPU where there is no GPU: beside the CPU variant it shows what the wheel changes.
PROFILE_NAMES = ("full", "onnx", "onnx-gpu")
FLOOR = "bentoml floor"
FLOOR_SERVICE = '''import bentoml


@bentoml.service(name="floor", workers=1, logging={"access": {"enabled": False}})
class Floor:
    @bentoml.api
    def ping(self) -> str:
        return "ok"
'''


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (from /proc's parent links)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MB (``VmRSS``); 0 when it has ended."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0.0
    return int(line.split()[1]) / 1024


def worker_pid(root: int) -> int:
    """The BentoML worker below ``bentoml serve`` (the process that loads the models and answers requests)."""
    for pid in process_tree(root):
        try:
            if b"_bentoml_impl.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise RuntimeError(f"no BentoML worker below process {root}")


def prepare(profile: str, home: Path, work: Path) -> dict:
    """Build the profile's Bento and its fresh venv; what the measurements need and the environment's size."""
    bento = build_bento(home, profile)
    requirements = bento / "env" / "python" / "requirements.txt"
    python = make_venv(work / f"venv-{profile}", requirements)
    return {"profile": profile, "bentofile": PROFILES[profile], "bento": f"{bento.parent.name}:{bento.name}",
            "backends": profile_backends(profile), "requirements": len(requirements.read_text().splitlines()),
            "venv_mb": venv_size_mb(python.parent.parent), "python": python, "path": bento}


def prepare_floor(onnx: dict, work: Path) -> dict:
    """BentoML's floor (module docstring), served from a folder with the onnx profile's venv."""
    folder = work / "floor"
    folder.mkdir(exist_ok=True)
    (folder / "floor.py").write_text(FLOOR_SERVICE)
    return {"profile": FLOOR, "python": onnx["python"], "path": "floor:Floor", "cwd": folder}


def start_once(built: dict, home: Path, work: Path, rep: int, seconds: float, body: Path) -> dict:
    """One start of a profile's Bento: seconds to ready, the worker's memory, and (``seconds`` > 0 and a Bento of
    this service) wrk rows."""
    outside = built.get("cwd") or work / f"outside-{built['profile']}-{rep}"
    outside.mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = serve(built["python"], built["path"], home, outside, port)
    try:
        while not answers_ok(f"{url}/readyz"):
            if proc.poll() is not None or time.monotonic() - started > READY_TIMEOUT_S:
                wait_ready(url, proc, outside / "serve.log")  # raises with the server's log
            time.sleep(READY_POLL_S)
        ready_s = time.monotonic() - started
        worker = worker_pid(proc.pid)
        row = {"profile": built["profile"], "rep": rep, "ready_s": ready_s, "rss_ready_mb": rss_mb(worker)}
        row["wrk"] = drive_default_route(url, body, seconds, rep) if seconds and built["profile"] != FLOOR else []
        row["rss_after_load_mb"] = rss_mb(worker)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{built['profile']} rep {rep}: ready in {row['ready_s']:.1f} s, worker {row['rss_ready_mb']:.0f} MB "
          f"resident once ready, {row['rss_after_load_mb']:.0f} MB after the load", flush=True)
    return row


def drive_default_route(url: str, body: Path, seconds: float, rep: int) -> list[dict]:
    """The peers benchmark's default route (native multipart /classify): a warm-up, then wrk at every level."""
    run_wrk(f"{url}/classify", 16, 1, body, content_type=MULTIPART)
    rows = []
    for level in LEVELS if rep % 2 == 0 else LEVELS[::-1]:
        stats = run_wrk(f"{url}/classify", level, seconds, body, content_type=MULTIPART)
        rows.append({"connections": level, "rps": stats["rps"], "p50_ms": stats["p50_us"] / 1e3,
                     "p99_ms": stats["p99_us"] / 1e3, "statuses": stats["statuses"],
                     "socket_errors": stats["socket_errors"], "wrk_cpu_cores": stats["wrk_cpu_cores"]})
    return rows


def summarise(built: list[dict], starts: list[dict]) -> list[dict]:
    """Per profile: medians and ranges over its starts, and the peers table's medians."""
    summary = []
    for item in built:
        mine = [s for s in starts if s["profile"] == item["profile"]]
        wrk = [{**r, "peer": item["profile"], "route": "native multipart", "rep": s["rep"]}
               for s in mine for r in s["wrk"]]
        summary.append({
            **{k: item[k] for k in ("profile", "bentofile", "bento", "backends", "requirements", "venv_mb")},
            "starts": len(mine),
            **{f"{k}_median": statistics.median(s[k] for s in mine) for k in ("ready_s", "rss_ready_mb",
                                                                              "rss_after_load_mb")},
            **{f"{k}_range": [min(s[k] for s in mine), max(s[k] for s in mine)] for k in ("ready_s", "rss_ready_mb")},
            "default_route": medians(wrk),
        })
    floor = [s["ready_s"] for s in starts if s["profile"] == FLOOR]
    full = next(s for s in summary if s["profile"] == "full")
    if floor:
        full["floor"] = {"ready_s_median": statistics.median(floor), "ready_s_range": [min(floor), max(floor)],
                         "rss_ready_mb_median": statistics.median(s["rss_ready_mb"] for s in starts
                                                                  if s["profile"] == FLOOR)}
    for other in summary:
        for key, name in (("venv_mb", "environment"), ("rss_ready_mb_median", "worker_rss"),
                          ("ready_s_median", "time_to_ready")):
            other[f"{name}_of_full"] = other[key] / full[key]
    return summary


def render(report: dict) -> str:
    """The Markdown report: one table of the sizes and starts, one of the default route."""
    lines = [f"# Bento profiles, {report['machine']}", "",
             f"Written by `python -m benchmark.profiles {shlex.join(report['argv'])}` at {report['when']}: each "
             f"profile's Bento built with `bentoml build -f <bentofile>`, installed into a fresh venv of only its "
             f"requirements, started {report['reps']} times (alternating, one server at a time) with "
             f"`bentoml serve`; medians, range in brackets. {report['cores']} cores, no GPU.", "",
             "| profile | bentofile | backends | requirements (lines) | environment (MB) | time to ready (s) | "
             "worker RSS once ready (MB) | worker RSS after the load (MB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in report["profiles"]:
        ready, rss = s["ready_s_range"], s["rss_ready_mb_range"]
        lines.append(f"| {s['profile']} | {s['bentofile']} | {', '.join(s['backends'])} | {s['requirements']} | "
                     f"{s['venv_mb']:,.0f} | {s['ready_s_median']:.1f} ({ready[0]:.1f}-{ready[1]:.1f}) | "
                     f"{s['rss_ready_mb_median']:,.0f} ({rss[0]:,.0f}-{rss[1]:,.0f}) | "
                     f"{s['rss_after_load_mb_median']:,.0f} |")
    lines += [""] + [f"The {s['profile']} profile against the full one: environment {s['environment_of_full']:.3f}, "
                     f"worker RSS once ready {s['worker_rss_of_full']:.3f}, time to ready "
                     f"{s['time_to_ready_of_full']:.3f}." for s in report["profiles"] if s["profile"] != "full"]
    full = next(s for s in report["profiles"] if s["profile"] == "full")
    if "floor" in full:
        floor, onnx = full["floor"], next(s for s in report["profiles"] if s["profile"] == "onnx")
        low, high = floor["ready_s_range"]
        lines += ["", f"BentoML's own floor, in the onnx profile's venv (a service with one endpoint and no model, "
                      f"`bentoml serve floor:Floor`, started the same way): ready in {floor['ready_s_median']:.2f} s "
                      f"({low:.2f}-{high:.2f}), worker RSS {floor['rss_ready_mb_median']:,.0f} MB. The onnx "
                      f"profile is ready {onnx['ready_s_median'] - floor['ready_s_median']:.2f} s after the floor; "
                      f"the floor alone is {floor['ready_s_median'] / full['ready_s_median']:.3f} of the full "
                      f"profile's time to ready, so a third of it leaves "
                      f"{full['ready_s_median'] / 3 - floor['ready_s_median']:.2f} s above the floor."]
    lines += ["", "Targets for the onnx (CPU) profile: at most 0.1, 0.333 and 0.333.", "",
              f"## Default route (native multipart /classify, one image, {report['seconds']} s per level, the peers "
              "benchmark's route)", "",
              "| profile | " + " | ".join(f"c={c} req/s, p50, p99" for c in LEVELS) + " |",
              "| --- | " + " | ".join("---" for _ in LEVELS) + " |"]
    for s in report["profiles"]:
        cells = {r["connections"]: f"{r['rps']:,.0f}, {r['p50_ms']:.1f} ms, {r['p99_ms']:.1f} ms"
                 + (f" ({r['non_200']} non-200)" if r["non_200"] else "") for r in s["default_route"]}
        lines.append(f"| {s['profile']} | " + " | ".join(cells.get(c, "-") for c in LEVELS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("~/bentoml/models"),
                        help="the BentoML model store holding the exported models (default: ~/bentoml/models)")
    # A start's time varies from one start to the next more than the profiles' medians differ from a third.
    parser.add_argument("--reps", type=int, default=5, help="starts per profile (default: 5)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="wrk seconds per level on every start; 0: no load (default: 5)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work here and keep it, venvs included (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem (default: results/bento-profiles-<machine>)")
    args = parser.parse_args(argv)
    env = environment_stamp()
    stem = args.out or RESULTS / f"bento-profiles-{machine_name(env, None)}"
    with tempfile.TemporaryDirectory(prefix="bento-profiles-") as tmp:
        work = args.keep or Path(tmp)
        home = work / "bentoml-home"
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "models").exists():
            (home / "models").symlink_to(args.models.expanduser().resolve())
        built = [prepare(profile, home, work) for profile in PROFILE_NAMES]
        for item in built:
            print(f"{item['profile']}: {item['bento']}, {item['requirements']} requirements, venv "
                  f"{item['venv_mb']:,.0f} MB", flush=True)
        body = work / "classify.body"
        body.write_bytes(our_routes(*one_image())[0].body)
        servers = [*built, prepare_floor(next(b for b in built if b["profile"] == "onnx"), work)]
        starts = [start_once(item, home, work, rep, args.seconds, body)
                  for rep in range(args.reps) for item in (servers if rep % 2 == 0 else servers[::-1])]
    report = {"machine": machine_name(env, None), "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "argv": argv if argv is not None else sys.argv[1:], "cores": env["cores"],
              "environment": env, "reps": args.reps, "seconds": args.seconds,
              "profiles": summarise(built, starts), "starts": starts}
    write_results(stem.name, render(report), report, stem.parent)
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
