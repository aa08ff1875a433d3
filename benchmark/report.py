"""The benchmark report: Markdown with the tables a user needs, the same data as JSON, PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.harness import write_results


def _plot(results: dict[str, Any], folder: Path, stem: str) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = results["inprocess"]["sweep"]
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        ax.plot([r["batch"] for r in mine], [r["images_per_s"] for r in mine], marker="o", label=backend)
    ax.axhline(results["inprocess"]["ceiling_images_per_s"], color="grey", linestyle="--", label="matmul ceiling")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images/s", title="In-process throughput")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    names.append(f"{stem}-throughput.png")
    fig.savefig(folder / names[-1], dpi=110)
    plt.close(fig)
    if results.get("http"):
        fig, (ax_p50, ax_p99) = plt.subplots(1, 2, figsize=(10, 4.2))
        singles = [r for r in results["http"]["rows"] if r["kind"] == "single"]
        for target in dict.fromkeys(r["target"] for r in singles):
            mine = [r for r in singles if r["target"] == target]
            for ax, key in ((ax_p50, "p50_ms"), (ax_p99, "p99_ms")):
                ax.plot([r["concurrency"] for r in mine], [r[key] for r in mine], marker="o", label=target)
        for ax, title in ((ax_p50, "p50 latency"), (ax_p99, "p99 latency")):
            ax.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title=title)
            ax.grid(alpha=0.3, which="both")
        ax_p50.legend(fontsize=8)
        fig.suptitle("One image per request over HTTP")
        fig.tight_layout()
        names.append(f"{stem}-latency.png")
        fig.savefig(folder / names[-1], dpi=110)
        plt.close(fig)
    return names


def matmul_devices(inproc: dict[str, Any]) -> dict[str, str]:
    """The device each matmul library ran on, judged from the run's data.

    On a GPU run numpy is on the CPU, torch on the GPU, and ONNX Runtime wherever its backends ran:
    runs before the fallback check kept a MatMul that ONNX Runtime had quietly moved to the CPU.
    """
    device = inproc["device"]
    ort = {p.get("device") for p in inproc["providers"].values() if p.get("runtime") == "onnxruntime"}
    where = {"numpy": "cpu", "torch": device, "onnxruntime": device if device in ort else "cpu"}
    return {lib: where.get(lib, device) for lib in inproc["matmul_gflops"]}


def ceiling_sentence(inproc: dict[str, Any]) -> str:
    """How the ceiling was found: each library's matmul on the device it ran on, and which ones count."""
    devices = matmul_devices(inproc)
    counted = [lib for lib, dev in devices.items() if dev == inproc["device"]]
    libs = ", ".join(f"{lib} {gflops:.0f} GFLOP/s on {devices[lib]}" for lib, gflops in inproc["matmul_gflops"].items())
    return (f"Ceiling: float32 matmul ({libs}; the best on {inproc['device']} counts: "
            f"{', '.join(counted)}) / {inproc['flops_per_image'] / 1e6:.2f} MFLOP per image = ")


def _inprocess_tables(inproc: dict[str, Any]) -> list[str]:
    lines = [
        "## In-process",
        "",
        ceiling_sentence(inproc) +
        f"**{inproc['ceiling_images_per_s']:,.0f} images/s**. Each call: median (p99) milliseconds, "
        "images/s, fraction of the ceiling.",
        "",
    ]
    rows = inproc["sweep"]
    batches = sorted({r["batch"] for r in rows})
    lines.append("| backend | " + " | ".join(f"batch {b}" for b in batches) + " |")
    lines.append("| --- |" + " --- |" * len(batches))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        cells = []
        for b in batches:
            r = next(r for r in rows if r["backend"] == backend and r["batch"] == b)
            cells.append(f"{r['median_s'] * 1e3:.3f} ({r['p99_s'] * 1e3:.3f}) ms<br>{r['images_per_s']:,.0f}/s "
                         f"({r['fraction_of_ceiling']:.2f})")
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    if inproc["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in inproc["skipped"].items()) + "."]
    overhead = inproc.get("wrapper_overhead")
    if overhead:
        lines += ["", f"Batch 1, our ONNX Runtime path against a bare `session.run` on the same input: "
                      f"{overhead['wrapper_s'] * 1e6:.1f} µs against {overhead['bare_session_run_s'] * 1e6:.1f} µs "
                      f"(ratio {overhead['ratio']:.2f})."]
    check = inproc["correctness"]
    names = list(check["accuracy"])
    lines += ["", f"## Correctness ({check['images']:,} test images)", "",
              "| backend | test accuracy | " + " | ".join(f"agrees with {n}" for n in names) + " |",
              "| --- | --- |" + " --- |" * len(names)]
    for a in names:
        lines.append(f"| {a} | {check['accuracy'][a]:.4f} | "
                     + " | ".join(f"{check['agreement'][a][b]:.4f}" for b in names) + " |")
    return lines


def generator_sentence(busiest: float, cores: int) -> str:
    """What wrk's CPU use says about the run, judged from the numbers (a quarter of the cores or less: light)."""
    use = f"wrk used at most {busiest:.2f} of the machine's {cores} cores (its own CPU time over the run's wall time)"
    if busiest <= cores / 4:
        return f"The load generator was light: {use}, leaving the rest to the server."
    return (f"The load generator competed with the server: {use}, so the server's figures here are lower than "
            "on a machine of its own.")


def _http_tables(http: dict[str, Any], cores: int) -> list[str]:
    rows = http["rows"]
    lines = ["", "## Over HTTP (wrk, closed loop, loopback)", "",
             "| kind | target | clients | req/s | images/s | p50 / p90 / p99 ms | answers | mean batch formed "
             "| wrk CPU (cores) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        batch = f"{r['mean_batch_size']:.1f}" if r.get("mean_batch_size") else "–"
        lines.append(f"| {r['kind']} | {r['target']} | {r['concurrency']} | {r['rps']:,.0f} | {r['images_per_s']:,.0f} "
                     f"| {r['p50_ms']:.2f} / {r['p90_ms']:.2f} / {r['p99_ms']:.2f} | {r['statuses']} | {batch} "
                     f"| {r['wrk_cpu_cores']:.2f} |")
    busiest = max(r["wrk_cpu_cores"] for r in rows)
    lines += ["", generator_sentence(busiest, cores)]
    task = http.get("task")
    if task:
        lines += ["", f"A dataset task ({task['target']}, {task['images']:,} images as .npy, submit to "
                      f"`{task['status']}`): {task['images_per_s']:,.0f} images/s; one client sending one image at a "
                      f"time beside it: p50 {task['online_p50_ms']:.2f} ms, p99 {task['online_p99_ms']:.2f} ms."]
    loop = http["open_loop"]
    lines += ["", f"Open loop ({loop['backend']}, {loop['rate']:,.0f} requests/s for {loop['seconds']:.0f} s, "
                  f"latency from each request's scheduled time): p50 {loop['p50_s'] * 1e3:.2f} ms, p90 "
                  f"{loop['p90_s'] * 1e3:.2f} ms, p99 {loop['p99_s'] * 1e3:.2f} ms, max {loop['max_s'] * 1e3:.0f} ms;"
                  f" answers {loop['statuses']}; the generator used {loop['generator_cpu_cores']:.2f} cores."]
    return lines


def write_report(results: dict[str, Any], folder: Path, conclusions: list[str]) -> Path:
    """``benchmark-<machine>.md``, ``.json`` and plots in ``folder``; returns the Markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    dry = bool(results.get("stages")) and results["device"] != "cuda"
    stem = f"benchmark-{results['machine']}" + ("-cpu-dry-run" if dry else "")
    plots = _plot(results, folder, stem) if results.get("inprocess") else []
    env = results["environment"]
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items())
    lines = [f"# Benchmark: {results['machine']}" + (" (CPU DRY RUN of the GPU rows, not GPU results)" if dry else ""),
             "", f"{results['date']}, `{results['command']}` ({results['seconds']:.0f} s). CPU {env['cpu']}, "
             f"{env['cores']} cores; GPU: {results['gpu'] or 'none'}. {libs}.", ""]
    if dry:
        lines += ["> **CPU dry run.** The GPU rows ran with CPU stand-ins (`--device cpu`) to check the code end to "
                  "end. No row here is a GPU measurement; do not quote it as one.", ""]
    if conclusions:
        lines += ["## Conclusions", "", *[f"- {c}" for c in conclusions], ""]
    if results.get("inprocess"):
        lines += ["Execution providers / devices actually used: " + "; ".join(
            f"{k}: {v.get('providers') or v.get('device')}" for k, v in results["inprocess"]["providers"].items())
            + ".", "", *_inprocess_tables(results["inprocess"])]
    if results.get("stages"):
        lines += ["", *device_lines(results)]
    if results.get("http"):
        lines += _http_tables(results["http"], int(results["environment"]["cores"]))
    lines += ["", *[f"![{p}]({p})" for p in plots]]
    return write_results(stem, "\n".join(lines), results, folder)


# --- the GPU rows (benchmark.device) ----------------------------------------------------------------------------

GPU, CPU, FELL_BACK = "gpu", "cpu", "failure: asked for CUDA, ran on the CPU"
TARGETS = {"inprocess_matmul": 0.3, "endtoend_copy": 0.5, "service_single": 1.0, "service_batch": 5.0,
           "parity_dp": 1e-4}


def runs_on_gpu(ran_on: dict[str, Any] | None) -> bool:
    """Whether a runtime's own account of itself (``describe()``, /model_info) says it runs on a GPU.

    ONNX Runtime lists the providers a session really got, in priority order: the CUDA provider must come
    first. torch names its device.
    """
    if not ran_on:
        return False
    if (providers := ran_on.get("providers")) is not None:
        return bool(providers) and providers[0] == "CUDAExecutionProvider"
    return str(ran_on.get("device", "")).lower().startswith(("cuda", "gpu"))


def row_status(requested: str, ran_on: dict[str, Any] | None) -> str:
    """``gpu``; ``cpu`` (asked for the CPU: a baseline or a dry run's stand-in); or the fallback failure."""
    if requested == "cuda":
        return GPU if runs_on_gpu(ran_on) else FELL_BACK
    return CPU


def _stage(results: dict[str, Any], name: str) -> dict[str, Any]:
    """A device stage's results; empty when it did not run or failed (its error is listed under Failures)."""
    stage = results.get("stages", {}).get(name) or {}
    return {} if "error" in stage else stage


def _ceiling(results: dict[str, Any], precision: str | None = None) -> float | None:
    """The matmul ceiling at ``precision`` in images/s for this model, or (no precision) the copy ceiling."""
    ceilings = _stage(results, "ceilings")
    if not ceilings:
        return None
    return ceilings["matmul_flops"][precision] / results["flops_per_image"] if precision \
        else ceilings["copy"]["images_per_s"]


def _fraction(value: float, ceiling: float | None) -> str:
    return f"{value / ceiling:.3f}" if ceiling else "–"


def _ran_on(row: dict[str, Any]) -> str:
    ran_on = row.get("ran_on") or {}
    return str((ran_on.get("providers") or [ran_on.get("device", "did not load")])[0])


def gpu_rows(rows: list[dict[str, Any]], stage: str, failures: list[dict]) -> list[dict[str, Any]]:
    """The rows that ran where they were asked to; the others (and errors) go to ``failures``."""
    kept = []
    for row in rows:
        status = "error" if "error" in row else row_status(row["requested"], row.get("ran_on"))
        if status in ("error", FELL_BACK):
            failures.append({"stage": stage, "status": status, **row})
        else:
            kept.append(row)
    return kept


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU targets, each with the measured value (GPU rows only) and whether it is met."""
    on_gpu = [r for r in _stage(results, "variants").get("rows", []) if row_status(r["requested"], r["ran_on"]) == GPU]
    best = max(((max(r["sweep"], key=lambda s: s["batch"])["images_per_s"] / c, r["name"]) for r in on_gpu
                if (c := _ceiling(results, r["precision"]))), default=None)
    e2e = max(((r["fraction_of_copy_ceiling"], f"{r['data']}, {r['precision']}, {r['mode']}")
               for r in _stage(results, "endtoend").get("rows", []) if "error" not in r
               and r.get("fraction_of_copy_ceiling") and row_status(r["requested"], r["ran_on"]) == GPU), default=None)
    found = [(f"in-process best >= {TARGETS['inprocess_matmul']} of the matmul ceiling at its precision", best,
              TARGETS["inprocess_matmul"], "{:.3f}"),
             (f"end to end from host uint8 >= {TARGETS['endtoend_copy']} of the copy ceiling", e2e,
              TARGETS["endtoend_copy"], "{:.3f}")]
    services = _stage(results, "service").get("services", {})
    device, cpu = services.get("device", {}), services.get("cpu", {})
    if device.get("requested") == "cuda":
        gpu_backends = {b for b, info in device.get("model_info", {}).items() if runs_on_gpu(info)}
        baseline = {(c["kind"], c["backend"], c["concurrency"]): c["images_per_s"] for c in cpu.get("rows", [])}
        for kind, need, pick in (("single", TARGETS["service_single"], min), ("batch", TARGETS["service_batch"], max)):
            # A CPU service that completed no request in the run is beaten by any GPU answer.
            ratios = [(r["images_per_s"] / base if base else float("inf"), f"{r['backend']} c={r['concurrency']}")
                      for r in device.get("rows", []) if r["kind"] == kind and r["backend"] in gpu_backends
                      and (base := baseline.get((kind, r["backend"], r["concurrency"]))) is not None]
            label = f"GPU service / CPU service, {kind} requests >= {need:g}x" + \
                (" (every concurrency)" if kind == "single" else "")
            found.append((label, pick(ratios, default=None), need, "{:.2f}x"))
    rows = [{"target": label, "measured": f"{fmt.format(value[0])} ({value[1]})" if value else None,
             "met": value[0] >= need if value else None} for label, value, need, fmt in found]
    for backend, p in _stage(results, "service").get("parity", {}).items():
        met = p["identical_top1"] == 1.0 and p["max_abs_dp"] is not None and p["max_abs_dp"] <= TARGETS["parity_dp"]
        rows.append({"target": f"parity {backend}: identical top-1 and max abs dp <= {TARGETS['parity_dp']:g}",
                     "measured": f"{p['identical_top1']:.4f}, {p['max_abs_dp']}",
                     "met": met if results["device"] == "cuda" else None})
    return rows


def device_lines(results: dict[str, Any]) -> list[str]:
    """Markdown of the GPU rows: targets, then each stage's table, then every failure by name."""
    failures: list[dict] = []
    dry = results["device"] != "cuda"
    lines = ["## GPU targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in targets(results):
        met = "dry run: not a GPU figure" if dry else {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured'] or '–'} | {met} |")
    if ceilings := _stage(results, "ceilings"):
        lines += ["", "## Ceilings (measured in this run)", "",
                  f"Square {ceilings['matmul_n']:,}-wide matmul through torch on random data; this model needs "
                  f"{results['flops_per_image'] / 1e6:.2f} MFLOP per image.", "",
                  "| precision | TFLOP/s | images/s at that rate |", "| --- | --- | --- |"]
        lines += [f"| {p} | {f / 1e12:.2f} | {f / results['flops_per_image']:,.0f} |"
                  for p, f in ceilings["matmul_flops"].items()]
        copy = ceilings["copy"]
        lines += ["", f"Host-to-device copy of {copy['bytes'] / 2**20:.0f} MiB of uint8: "
                  + ", ".join(f"{kind} {rate / 1e9:.2f} GB/s" for kind, rate in copy["rates"].items())
                  + f"; the best is **{copy['images_per_s']:,.0f} images/s** at 784 bytes per image."]
    if variants := _stage(results, "variants"):
        failures += [{"stage": "in-process", **f} for f in variants["failures"]]
        rows = gpu_rows(variants["rows"], "in-process", failures)
        batches = sorted({s["batch"] for r in rows for s in r["sweep"]})
        lines += ["", "## On the device, in process", "",
                  "Each call: median (p99) ms and images/s. *host*: numpy float32 in, logits back on the host (as the "
                  "service calls it); *device*: uint8 input already on the device, logits left there. Correctness on "
                  f"every test image against {variants['reference']}. Fractions at the largest batch: of the matmul "
                  "ceiling at the row's precision and of the copy ceiling.", "",
                  "| variant | ran on | precision | placement | accuracy | top-1 = fp32 | max abs dp | "
                  + " | ".join(f"batch {b:,}" for b in batches) + " | of matmul | of copy |",
                  "| --- " * (9 + len(batches)) + "|"]
        for r in rows:
            cells = {s["batch"]: f"{s['median_s'] * 1e3:.3f} ({s['p99_s'] * 1e3:.3f})<br>{s['images_per_s']:,.0f}/s"
                     for s in r["sweep"]}
            top, c = max(r["sweep"], key=lambda s: s["batch"])["images_per_s"], r["correctness"]
            lines.append(f"| {r['name']} | {_ran_on(r)} | {r['precision']} | {r['placement']} | {c['accuracy']:.4f} "
                         f"| {c['agreement_with_fp32']:.4f} | {c['max_abs_dp']:.1e} | "
                         + " | ".join(cells.get(b, "–") for b in batches)
                         + f" | {_fraction(top, _ceiling(results, r['precision']))} | "
                           f"{_fraction(top, _ceiling(results))} |")
    if endtoend := _stage(results, "endtoend"):
        lines += ["", "## End to end from host uint8", "",
                  f"uint8 images in host memory to class ids in host memory, chunks of {endtoend['chunk']:,}; median "
                  "of three passes.", "", "| data | precision | mode | ran on | images/s | of copy ceiling | accuracy "
                  "| top-1 = fp32 | same answers as test |", "| --- " * 9 + "|"]
        for r in gpu_rows(endtoend["rows"], "end to end", failures):
            checks = [format(r[k], ".4f") if k in r else "–" for k in
                      ("accuracy", "agreement_with_fp32", "same_answers_as_test")]
            lines.append(f"| {r['data']} | {r['precision']} | {r['mode']} | {_ran_on(r)} | {r['images_per_s']:,.0f} "
                         f"| {_fraction(r['images_per_s'], _ceiling(results))} | " + " | ".join(checks) + " |")
    if service := _stage(results, "service"):
        lines += ["", "## The service on the device against the service on the CPU (bentoml serve, wrk)", "",
                  "| service | backend | ran on (/model_info) | kind | clients | images/s | p50 / p99 ms | answers |",
                  "| --- " * 8 + "|"]
        for label, record in service["services"].items():
            if "error" in record:
                failures.append({"stage": "service", "name": label, **record})
            for backend, info in record.get("model_info", {}).items():
                if row_status(record["requested"], info) == FELL_BACK:
                    failures.append({"stage": "service", "name": f"{label} {backend}", "requested": record["requested"],
                                     "ran_on": info, "status": FELL_BACK})
            for r in record.get("rows", []):
                info = record["model_info"].get(r["backend"], {})
                if (status := row_status(record["requested"], info)) != FELL_BACK:
                    name = "CPU baseline" if label == "cpu" else "GPU" if status == GPU else "CPU stand-in for the GPU"
                    lines.append(f"| {name} | {r['backend']} | {_ran_on({'ran_on': info})} ({status}) | {r['kind']} | "
                                 f"{r['concurrency']} | {r['images_per_s']:,.0f} | {r['p50_ms']:.2f} / "
                                 f"{r['p99_ms']:.2f} | {r['statuses']} |")
        lines += ["", "Parity, device service against CPU service, every test image through /classify_array:", "",
                  "| backend | identical top-1 | identical top-k ids | max abs dp (top-k) |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {b} | {p['identical_top1']:.4f} | {p['identical_top_k_ids']:.4f} | {p['max_abs_dp']} |"
                  for b, p in service["parity"].items()]
    errors = [(n, s["error"]) for n, s in results.get("stages", {}).items() if "error" in (s or {})]
    lines += ["", "## GPU failures", ""]
    lines += [f"- {f['stage']}, {f['name'] if 'name' in f else f.get('data')}: asked for {f['requested']}, ran on "
              f"{(f.get('ran_on') or {}).get('providers') or (f.get('ran_on') or {}).get('device') or 'did not load'}"
              f": {f.get('error') or f.get('status')}." for f in failures]
    lines += [f"- stage {name}: {error}" for name, error in errors]
    if not failures and not errors:
        lines.append("None: every row ran where it was asked to.")
    return lines
