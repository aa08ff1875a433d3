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
    stem = f"benchmark-{results['machine']}"
    plots = _plot(results, folder, stem)
    env = results["environment"]
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items())
    lines = [f"# Benchmark: {results['machine']}", "",
             f"{results['date']}, `python -m benchmark{' --quick' if results['quick'] else ''}` "
             f"({results['seconds']:.0f} s). CPU {env['cpu']}, {env['cores']} cores; GPU: {results['gpu'] or 'none'}. "
             f"{libs}.", "",
             "Execution providers / devices actually used: "
             + "; ".join(f"{k}: {v.get('providers') or v.get('device')}" for k, v in
                         results["inprocess"]["providers"].items()) + ".", ""]
    if conclusions:
        lines += ["## Conclusions", "", *[f"- {c}" for c in conclusions], ""]
    lines += _inprocess_tables(results["inprocess"])
    if results.get("http"):
        lines += _http_tables(results["http"], int(results["environment"]["cores"]))
    lines += ["", *[f"![{p}]({p})" for p in plots]]
    return write_results(stem, "\n".join(lines), results, folder)
