"""The GPU benchmark's report: ``benchmark-<gpu>.md`` / ``.json`` / plot, from the stages' results.

Which device really ran a row is decided here, once, by :func:`row_status`: a row asked for CUDA
whose providers or device say CPU is a failure and never enters a GPU table. A CPU dry run
(``--device cpu``) gets a file name and a title that say so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

GPU, CPU, FELL_BACK = "gpu", "cpu", "failure: asked for CUDA, ran on the CPU"
TARGETS = {"inprocess_matmul": 0.3, "endtoend_copy": 0.5, "service_single": 1.0, "service_batch": 5.0,
           "parity_dp": 1e-4}


def runs_on_gpu(ran_on: dict[str, Any] | None) -> bool:
    """Whether a runtime's own account of itself (``describe()``, /model_info) says it runs on a GPU.

    ONNX Runtime lists the providers a session really got, in priority order; the CUDA provider
    must come first. torch and TensorFlow name their device.
    """
    if not ran_on:
        return False
    providers = ran_on.get("providers")
    if providers is not None:
        return bool(providers) and providers[0] == "CUDAExecutionProvider"
    device = str(ran_on.get("device", "")).lower()
    return device.startswith("cuda") or device.startswith("gpu")


def row_status(requested: str, ran_on: dict[str, Any] | None) -> str:
    """``gpu``; ``cpu`` (asked for the CPU: a baseline or a dry run's stand-in); or the fallback failure."""
    if requested == "cuda":
        return GPU if runs_on_gpu(ran_on) else FELL_BACK
    return CPU


def split_rows(rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(rows that ran where they were asked to, rows that fell back); each row gets its ``status``."""
    kept, failed = [], []
    for row in rows:
        row["status"] = row_status(row["requested"], row.get("ran_on"))
        (failed if row["status"] == FELL_BACK else kept).append(row)
    return kept, failed


def report_stem(state: dict[str, Any]) -> str:
    """``benchmark-<gpu>`` for a GPU run, ``benchmark-<cpu>-cpu-dry-run`` for a dry run."""
    name = re.sub(r"[^a-z0-9]+", "-", (state.get("gpu") or state["environment"]["cpu"]).lower()).strip("-")
    return f"benchmark-{name}" if state["device"] == "cuda" else f"benchmark-{name}-cpu-dry-run"


def _ceilings(state: dict[str, Any]) -> dict[str, Any] | None:
    """The ceilings stage, when it ran without error."""
    ceilings = state["stages"].get("ceilings")
    return ceilings if ceilings and "error" not in ceilings else None


def matmul_images_per_s(state: dict[str, Any], precision: str) -> float | None:
    """The matmul ceiling at ``precision`` in images/s for this model (FLOP/s over FLOP per image)."""
    ceilings = _ceilings(state)
    return ceilings["matmul_flops"][precision] / state["flops_per_image"] if ceilings else None


def copy_images_per_s(state: dict[str, Any]) -> float | None:
    """The host-to-device copy ceiling in uint8 images/s."""
    ceilings = _ceilings(state)
    return ceilings["copy"]["images_per_s"] if ceilings else None


def _fraction(value: float, ceiling: float | None) -> str:
    """``value / ceiling`` to three places, or a dash without a ceiling."""
    return f"{value / ceiling:.3f}" if ceiling else "–"


def ceilings_section(state: dict[str, Any]) -> list[str]:
    """Markdown: the matmul rate per precision and the copy rate, both from this run."""
    ceilings = _ceilings(state)
    if not ceilings:
        return ["## Ceilings", "", f"Not measured: {state['stages'].get('ceilings', {}).get('error', 'stage not run')}"]
    lines = ["## Ceilings (measured in this run)", "",
             f"Square {ceilings['matmul_n']:,}-wide matmul through torch on random data; this model needs "
             f"{state['flops_per_image'] / 1e6:.2f} MFLOP per image.", "",
             "| precision | TFLOP/s | images/s at that rate |", "| --- | --- | --- |"]
    for precision, flops in ceilings["matmul_flops"].items():
        lines.append(f"| {precision} | {flops / 1e12:.2f} | {flops / state['flops_per_image']:,.0f} |")
    copy = ceilings["copy"]
    lines += ["", f"Host-to-device copy of {copy['bytes'] / 2**20:.0f} MiB of uint8: "
              + ", ".join(f"{kind} {rate / 1e9:.2f} GB/s" for kind, rate in copy["rates"].items())
              + f"; the best is **{copy['images_per_s']:,.0f} images/s** at 784 bytes per image."]
    return lines


def inprocess_section(state: dict[str, Any], failures: list[dict]) -> list[str]:
    """Markdown: GPU (or stand-in) rows per batch size; fallbacks and load failures go to ``failures``."""
    stage = state["stages"].get("inprocess")
    if not stage or "error" in stage:
        return ["## In-process", "", f"Not run: {(stage or {}).get('error', 'stage not run')}"]
    rows, fell_back = split_rows(stage["rows"])
    failures += [{"stage": "in-process", **r} for r in fell_back] + [{"stage": "in-process", **f}
                                                                     for f in stage["failures"]]
    batches = sorted({s["batch"] for r in rows for s in r["sweep"]})
    copy_ceiling = copy_images_per_s(state)
    lines = ["## In-process", "",
             "Each call: median (p99) ms and images/s. *host*: numpy float32 in, logits back on the host (the "
             "Predictor API the service uses); *device*: uint8 input already on the device, logits left there. "
             f"Correctness on {stage['rows'][0]['correctness']['images'] if stage['rows'] else 0:,} test images "
             f"against {stage['reference']}. Fractions at the largest batch: of the matmul ceiling at the row's "
             "precision (fp32 for host rows) and of the copy ceiling.", "",
             "| variant | ran on | precision | placement | accuracy | top-1 = fp32 | max abs dp | "
             + " | ".join(f"batch {b:,}" for b in batches) + " | of matmul | of copy |",
             "| --- " * (9 + len(batches)) + "|"]
    for r in rows:
        cells = {s["batch"]: f"{s['median_s'] * 1e3:.3f} ({s['p99_s'] * 1e3:.3f})<br>{s['images_per_s']:,.0f}/s"
                 for s in r["sweep"]}
        top = max(r["sweep"], key=lambda s: s["batch"])
        c = r["correctness"]
        lines.append(f"| {r['name']} | {_where(r)} | {r['precision']} | {r['placement']} | {c['accuracy']:.4f} | "
                     f"{c['agreement_with_fp32']:.4f} | {c['max_abs_dp']:.1e} | "
                     + " | ".join(cells.get(b, "–") for b in batches)
                     + f" | {_fraction(top['images_per_s'], matmul_images_per_s(state, r['precision']))} | "
                       f"{_fraction(top['images_per_s'], copy_ceiling)} |")
    return lines


def _where(row: dict[str, Any]) -> str:
    """What ran a row, and its status, for a table cell."""
    ran_on = row.get("ran_on") or {}
    what = ran_on.get("providers", [ran_on.get("device", "?")])[0]
    return f"{what} ({'CPU stand-in' if row['status'] == CPU and row['requested'] == 'cpu' else row['status']})"


def endtoend_section(state: dict[str, Any], failures: list[dict]) -> list[str]:
    """Markdown: host-to-host rates per data set, precision and mode; fallbacks and errors to ``failures``."""
    stage = state["stages"].get("endtoend")
    if not stage or "error" in stage:
        return ["## End to end from host uint8", "", f"Not run: {(stage or {}).get('error', 'stage not run')}"]
    rows, fell_back = split_rows([r for r in stage["rows"] if "error" not in r])
    failures += [{"stage": "end to end", "name": f"{r['data']} {r['precision']} {r['mode']}", **r}
                 for r in fell_back + [r for r in stage["rows"] if "error" in r]]
    lines = ["## End to end from host uint8", "",
             f"uint8 images in host memory to class ids and confidences in host memory, chunks of "
             f"{stage['chunk']:,}; median of repeated passes. torch saw the registered array as pinned: "
             f"{stage.get('pinned_input_seen_by_torch')}.", "",
             "| data | precision | mode | ran on | images/s | of copy ceiling | accuracy | top-1 = fp32 "
             "| same answers as test |", "| --- " * 9 + "|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['precision']} | {r['mode']} | {_where(r)} | {r['images_per_s']:,.0f} | "
                     f"{_fraction(r['images_per_s'], copy_images_per_s(state))} | "
                     f"{r.get('accuracy', '–') if 'accuracy' not in r else format(r['accuracy'], '.4f')} | "
                     f"{format(r['agreement_with_fp32'], '.4f') if 'agreement_with_fp32' in r else '–'} | "
                     f"{format(r['same_answers_as_test'], '.4f') if 'same_answers_as_test' in r else '–'} |")
    return lines


def diagnosis_section(state: dict[str, Any]) -> list[str]:
    """Markdown: per-layer matmul times and the copy/model split of the pipeline."""
    stage = state["stages"].get("diagnose")
    if not stage or "error" in stage:
        return ["## Where the time goes", "", f"Not run: {(stage or {}).get('error', 'stage not run')}"]
    lines = ["## Where the time goes", "",
             "Each layer's matrix product alone (random data, same shapes) against the square-matmul ceiling at "
             "its precision, and their sum against the whole forward pass from uint8 on the device:", "",
             "| precision | batch | layer | ms | TFLOP/s | of matmul ceiling |", "| --- " * 6 + "|"]
    ceilings = _ceilings(state)
    for profile in stage["layers"]:
        peak = ceilings["matmul_flops"][profile["precision"]] if ceilings else None
        for layer in profile["layers"]:
            lines.append(f"| {profile['precision']} | {profile['batch']:,} | {layer['shape']} | "
                         f"{layer['seconds'] * 1e3:.3f} | {layer['flops_per_s'] / 1e12:.2f} | "
                         f"{_fraction(layer['flops_per_s'], peak)} |")
        lines.append(f"| {profile['precision']} | {profile['batch']:,} | all matmuls / whole forward | "
                     f"{profile['matmul_seconds'] * 1e3:.3f} / {profile['forward_seconds'] * 1e3:.3f} | | "
                     f"rest (bias, ReLU, scaling, launches): {profile['other_share']:.0%} |")
    e2e = {(r["precision"], r["mode"]): r for r in (state["stages"].get("endtoend") or {}).get("rows", [])
           if r.get("data", "").startswith("synthetic") and "error" not in r}
    lines += ["", "The end-to-end chunks: host-to-device copies alone (from pinned memory), the model alone on "
                  "chunks already on the device, and the measured pipeline (pre-pinned mode) that overlaps them:", "",
              "| precision | images | copies alone ms | model alone ms | pipelined ms | bound by |",
              "| --- | --- | --- | --- | --- | --- |"]
    for split in stage["pipeline"]:
        measured = e2e.get((split["precision"], "pre-pinned")) or e2e.get((split["precision"], "in-order"))
        bound = "copies" if split["copy_seconds"] >= split["compute_seconds"] else "the model"
        lines.append(f"| {split['precision']} | {split['images']:,} | {split['copy_seconds'] * 1e3:.1f} | "
                     f"{split['compute_seconds'] * 1e3:.1f} | "
                     f"{measured['median_s'] * 1e3:.1f} | {bound} |" if measured else
                     f"| {split['precision']} | {split['images']:,} | {split['copy_seconds'] * 1e3:.1f} | "
                     f"{split['compute_seconds'] * 1e3:.1f} | – | {bound} |")
    return lines


def service_section(state: dict[str, Any], failures: list[dict]) -> list[str]:
    """Markdown: wrk rows of the CPU and device services and their parity; fallbacks to ``failures``."""
    stage = state["stages"].get("service")
    if not stage or "error" in stage:
        return ["## The service", "", f"Not run: {(stage or {}).get('error', 'stage not run')}"]
    lines = ["## The service (bentoml serve, wrk)", "",
             "| service | backend | ran on (/model_info) | kind | clients | req/s | images/s | p50 / p99 ms "
             "| answers |", "| --- " * 9 + "|"]
    for label, service in stage["services"].items():
        if "error" in service:
            failures.append({"stage": "service", "name": label, "requested": service["requested"], "ran_on": None,
                             "error": service["error"]})
        for backend, info in service.get("model_info", {}).items():
            status = row_status(service["requested"], info)
            if status == FELL_BACK:
                failures.append({"stage": "service", "name": f"{label} {backend}", "requested": service["requested"],
                                 "ran_on": info, "status": status})
        for r in service.get("rows", []):
            info = service["model_info"].get(r["backend"], {})
            status = row_status(service["requested"], info)
            if status == FELL_BACK:
                continue
            what = (info.get("providers") or [info.get("device", "?")])[0]
            name = {"cpu": "CPU baseline", "device": "GPU" if status == GPU else "CPU stand-in for the GPU"}[label]
            lines.append(f"| {name} | {r['backend']} | {what} ({status}) | {r['kind']} | {r['concurrency']} | "
                         f"{r['rps']:,.0f} | {r['images_per_s']:,.0f} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | "
                         f"{r['statuses']} |")
    lines += ["", "Parity, device service against the CPU service, all test images through /classify_array:", "",
              "| backend | identical top-1 | identical top-k ids | max abs dp (top-k) |", "| --- | --- | --- | --- |"]
    for backend, p in stage["parity"].items():
        lines.append(f"| {backend} | {p['identical_top1']:.4f} | {p['identical_top_k_ids']:.4f} | "
                     f"{p['max_abs_dp']:.1e} |" if p["max_abs_dp"] is not None else f"| {backend} | – | – | – |")
    return lines


def cli_section(state: dict[str, Any], failures: list[dict]) -> list[str]:
    """Markdown: the batch CLI per backend; fallbacks to ``failures``."""
    stage = state["stages"].get("cli")
    if not stage or "error" in stage:
        return ["## Batch CLI --local", "", f"Not run: {(stage or {}).get('error', 'stage not run')}"]
    rows, fell_back = split_rows(stage["rows"])
    failures += [{"stage": "batch CLI", "name": r["backend"], **r} for r in fell_back]
    lines = ["## Batch CLI --local", "", "| backend | ran on | exit | seconds | images/s | accuracy |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['backend']} | {_where(r)} | {r['exit_code']} | {r['seconds']:.1f} | "
                     f"{r.get('images_per_s', 0):,.0f} | {r.get('accuracy', float('nan')):.4f} |")
    return lines


def providers_summary(state: dict[str, Any]) -> list[str]:
    """One line per stage: which providers or devices its rows asked for and which really ran them."""
    stages = state["stages"]
    seen: dict[str, set[str]] = {}

    def note(stage: str, requested: str, ran_on: dict | None) -> None:
        what = ((ran_on or {}).get("providers") or [(ran_on or {}).get("device", "did not load")])[0]
        seen.setdefault(stage, set()).add(f"{what} (asked {requested}: {row_status(requested, ran_on)})")

    for name in ("inprocess", "endtoend", "cli"):
        for row in (stages.get(name) or {}).get("rows", []):
            note(name, row["requested"], row.get("ran_on"))
    for failure in (stages.get("inprocess") or {}).get("failures", []):
        note("inprocess", failure["requested"], failure.get("ran_on"))
    for label, service in (stages.get("service") or {}).get("services", {}).items():
        for info in service.get("model_info", {}).values():
            note(f"service ({label})", service["requested"], info)
    return ["## Which providers really ran", "",
            *[f"- {stage}: " + "; ".join(sorted(items)) for stage, items in seen.items()]]


def targets(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's four targets, each with the measured value (GPU rows only) and whether it is met."""
    found = []
    inproc = state["stages"].get("inprocess") or {}
    best = None
    for row in [r for r in inproc.get("rows", []) if row_status(r["requested"], r.get("ran_on")) == GPU]:
        top = max(row["sweep"], key=lambda s: s["batch"])
        ceiling = matmul_images_per_s(state, row["precision"])
        if ceiling and (best is None or top["images_per_s"] / ceiling > best[0]):
            best = (top["images_per_s"] / ceiling, row["name"])
    found.append({"target": f"in-process best >= {TARGETS['inprocess_matmul']} of the matmul ceiling at its precision",
                  "measured": f"{best[0]:.3f} ({best[1]})" if best else None,
                  "met": best[0] >= TARGETS["inprocess_matmul"] if best else None})
    e2e = [r for r in (state["stages"].get("endtoend") or {}).get("rows", [])
           if "error" not in r and row_status(r["requested"], r.get("ran_on")) == GPU
           and r.get("fraction_of_copy_ceiling")]
    top = max(e2e, key=lambda r: r["fraction_of_copy_ceiling"], default=None)
    found.append({"target": f"end to end from host uint8 >= {TARGETS['endtoend_copy']} of the copy ceiling",
                  "measured": f"{top['fraction_of_copy_ceiling']:.3f} ({top['data']}, {top['precision']}, "
                              f"{top['mode']})" if top else None,
                  "met": top["fraction_of_copy_ceiling"] >= TARGETS["endtoend_copy"] if top else None})
    found += _service_targets(state)
    return found


def _service_targets(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The service speed-up targets (GPU service rows only) and the parity targets."""
    stage = state["stages"].get("service") or {}
    services = stage.get("services", {})
    found = []
    if "device" in services and "cpu" in services and services["device"]["requested"] == "cuda":
        on_gpu = {b for b, info in services["device"].get("model_info", {}).items() if runs_on_gpu(info)}
        for kind, need in (("single", TARGETS["service_single"]), ("batch", TARGETS["service_batch"])):
            ratios = []
            for r in services["device"].get("rows", []):
                cpu = [c for c in services["cpu"].get("rows", []) if (c["kind"], c["backend"], c["concurrency"]) ==
                       (r["kind"], r["backend"], r["concurrency"])]
                if r["kind"] == kind and r["backend"] in on_gpu and cpu:
                    # A CPU service that completed no request in the run is beaten by any GPU answer.
                    ratio = r["images_per_s"] / cpu[0]["images_per_s"] if cpu[0]["images_per_s"] else float("inf")
                    ratios.append((ratio, f"{r['backend']} c={r['concurrency']}"))
            worst = min(ratios, default=None) if kind == "single" else max(ratios, default=None)
            found.append({"target": f"GPU service / CPU service, {kind} requests >= {need:g}x"
                                    + (" (every concurrency)" if kind == "single" else ""),
                          "measured": f"{worst[0]:.2f}x ({worst[1]})" if worst else None,
                          "met": worst[0] >= need if worst else None})
    for backend, p in stage.get("parity", {}).items():
        met = p["identical_top1"] == 1.0 and p["max_abs_dp"] is not None and p["max_abs_dp"] <= TARGETS["parity_dp"]
        found.append({"target": f"parity {backend}: identical top-1 and max abs dp <= {TARGETS['parity_dp']:g}",
                      "measured": f"{p['identical_top1']:.4f}, {p['max_abs_dp']}",
                      "met": met if state["device"] == "cuda" else None})
    return found


def _plot(state: dict[str, Any], folder: Path, stem: str) -> list[str]:
    """Throughput against batch size per in-process row, with the ceilings; returns the file names."""
    stage = state["stages"].get("inprocess") or {}
    try:
        import matplotlib
    except ImportError:
        return []
    if not stage.get("rows"):
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    rows, _ = split_rows([dict(r) for r in stage["rows"]])
    for r in rows:
        ax.plot([s["batch"] for s in r["sweep"]], [s["images_per_s"] for s in r["sweep"]], marker="o", label=r["name"])
    for label, value in (("copy ceiling (uint8)", copy_images_per_s(state)),
                         ("bf16 matmul ceiling", matmul_images_per_s(state, "bf16")),
                         ("fp32 matmul ceiling", matmul_images_per_s(state, "fp32"))):
        if value:
            ax.axhline(value, linestyle="--", linewidth=1, color="grey")
            ax.annotate(label, (1, value), fontsize=7, va="bottom")
    title = "In-process throughput" + (" (CPU DRY RUN)" if state["device"] != "cuda" else f" on {state['gpu']}")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images/s", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    name = f"{stem}-throughput.png"
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
    return [name]


def render(state: dict[str, Any], plots: list[str]) -> str:
    """The Markdown report."""
    failures: list[dict] = []
    env = state["environment"]
    dry = state["device"] != "cuda"
    title = (f"# GPU benchmark: CPU DRY RUN on {env['cpu']} (not GPU results)" if dry
             else f"# GPU benchmark: {state['gpu']}")
    lines = [title, ""]
    if dry:
        lines += ["> **CPU dry run.** Every stage ran with CPU stand-ins (`--device cpu`) to check the script end "
                  "to end. No row here is a GPU measurement; do not quote it as one.", ""]
    lines += [f"{state['date']}, `{state['command']}` ({state['seconds']:.0f} s). CPU {env['cpu']}, "
              f"{env['cores']} cores; GPU: {state.get('gpu') or 'none'}. "
              + ", ".join(f"{k} {v}" for k, v in env["libraries"].items()) + ".", ""]
    if state.get("carry"):
        lines += [f"Carried and installed: {state['carry']}", ""]
    lines += ["TensorFlow (the SavedModel backend) is not run on the GPU: the device image's CUDA 13 libraries do "
              "not serve TensorFlow's CUDA 12 build, and CUDA 12 does not fit in a carry.", ""]
    body = [*ceilings_section(state), "", *inprocess_section(state, failures), "", *endtoend_section(state, failures),
            "", *diagnosis_section(state), "", *service_section(state, failures), "", *cli_section(state, failures)]
    stage_errors = [(name, s["error"]) for name, s in state["stages"].items() if isinstance(s, dict) and "error" in s]
    lines += ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in targets(state):
        met = "dry run: not a GPU figure" if dry else {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured'] or '–'} | {met} |")
    lines += ["", *providers_summary(state), "", *body, "", "## Failures", ""]
    if not failures and not stage_errors:
        lines.append("None: every row ran where it was asked to.")
    for f in failures:
        ran_on = f.get("ran_on")
        where = (ran_on.get("providers") or ran_on.get("device")) if ran_on else "did not load"
        lines.append(f"- {f['stage']}, {f['name']}: asked for {f['requested']}, ran on {where}: "
                     f"{f.get('error') or f.get('status')}.")
    lines += [f"- stage {name}: {error}" for name, error in stage_errors]
    lines += ["", *[f"![{p}]({p})" for p in plots]]
    return "\n".join(lines) + "\n"


def write_report(state: dict[str, Any], folder: Path) -> Path:
    """``<stem>.json``, ``<stem>.md`` and the plot in ``folder``; returns the Markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = report_stem(state)
    (folder / f"{stem}.json").write_text(json.dumps(state, indent=1, default=str) + "\n")
    plots = _plot(state, folder, stem)
    path = folder / f"{stem}.md"
    path.write_text(render(state, plots))
    return path
