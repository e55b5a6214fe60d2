"""The report of a benchmark: the summary (candidate against reference) and ``bench.md``."""

from __future__ import annotations

from typing import Any

from wakesleep.eval.compare import paired_nll_difference

__all__ = ["markdown", "summary"]


def summary(rows: dict[str, dict[str, Any]], candidate: str = "ddc_hm", reference: str = "vimco_k50") -> dict[str, Any]:
    """Compare ``candidate`` with ``reference``: per-epoch speed-ups (wall, CPU time, FLOPs), the time the
    candidate needs to reach the reference's final curve MMD^2, the paired AIS NLL difference, and the goals.

    Parameters
    ----------
    rows : dict
        label -> the row of :func:`wakesleep.bench.run_one` (or ``{"error": ...}``).
    candidate, reference : str
        Labels of ``rows``.

    Returns
    -------
    dict
        ``candidate`` and ``reference`` only, when either is missing or failed.
    """
    out: dict[str, Any] = {"candidate": candidate, "reference": reference}
    c, r = rows.get(candidate), rows.get(reference)
    if not c or not r or "error" in c or "error" in r:
        return out
    out["epoch_speedup"] = r["seconds_per_epoch"] / c["seconds_per_epoch"]
    out["epoch_speedup_cpu"] = r["cpu_seconds_per_epoch"] / c["cpu_seconds_per_epoch"]
    out["flop_ratio_per_epoch"] = r["gflop_per_epoch"] / c["gflop_per_epoch"]
    target = r["curve"][-1]["mmd2"] if r["curve"] else r["final_mmd2"]
    out["target_mmd2"] = target
    hit = next((p for p in c["curve"] if p["mmd2"] <= target), None)
    out["candidate_seconds_to_target"] = hit["train_seconds"] if hit else None
    out["reference_seconds"] = r["train_seconds"]
    out["time_to_target_fraction"] = hit["train_seconds"] / r["train_seconds"] if hit else None
    r_cpu = r["curve"][-1].get("train_cpu_seconds") if r["curve"] else None
    hit_cpu = hit.get("train_cpu_seconds") if hit else None
    out["time_to_target_fraction_cpu"] = hit_cpu / r_cpu if hit_cpu is not None and r_cpu else None
    diff = paired_nll_difference(c.get("ais_nll"), r.get("ais_nll"))  # candidate minus reference, same images
    if diff is not None:
        out["ais_nll_difference"] = diff
    out["goal_epoch_speedup_5x"] = out["epoch_speedup"] >= 5
    out["goal_time_to_target_one_fifth"] = bool(hit) and out["time_to_target_fraction"] <= 0.2
    return out


def _reached(s: dict[str, Any]) -> str:
    if s.get("time_to_target_fraction") is None:
        return "not reached within the run"
    text = (
        f"{s['candidate_seconds_to_target']:.1f} s = {s['time_to_target_fraction']:.2f} of {s['reference']}'s "
        f"{s['reference_seconds']:.1f} s"
    )
    if s.get("time_to_target_fraction_cpu") is not None:
        text += f" (in CPU time: {s['time_to_target_fraction_cpu']:.2f})"
    return text


def markdown(result: dict[str, Any]) -> str:
    """``bench.md``: one table row per algorithm (and the independent-pixels reference), the summary, notes.

    Parameters
    ----------
    result : dict
        The content of ``bench.json`` (:func:`wakesleep.bench.run_bench`).

    Returns
    -------
    str
    """
    lines = [
        f"# wakesleep bench sbn ({result['epochs']} epoch(s), {result['n_train']} training images)",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        "| algorithm | s / epoch (wall) | CPU s / epoch | GFLOP / iteration | achieved GFLOP/s | "
        "% of matmul rate (wall) | % of matmul rate (CPU time) | peak RSS (MB) | test MMD^2 | NLL (K) | AIS NLL |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in result["algorithms"].items():
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | | | | | | | | |")
            continue
        ais = r.get("ais_nll")
        name = label + (f" (sleep every {r['sleep_every']})" if r.get("sleep_every", 1) > 1 else "")
        if r.get("precision", "float32") != "float32":
            name += f" ({r['precision']} mixed; its products' rate {r['matmul_gflops_lowered']:.0f} GFLOP/s)"
        lines.append(
            f"| {name} | {r['seconds_per_epoch']:.1f} | {r['cpu_seconds_per_epoch']:.1f} | "
            f"{r['gflop_per_iteration']:.3g} | {r['achieved_gflops']:.3g} | "
            f"{100 * r['fraction_of_matmul_rate']:.1f} % of {r['matmul_gflops']:.0f} | "
            + (
                f"{100 * r['cpu_fraction_of_matmul_rate']:.1f} % of {r['matmul_gflops_per_cpu_second']:.0f} | "
                if r.get("cpu_fraction_of_matmul_rate") is not None
                else "n/a | "
            )
            + f"{r['peak_rss_mb']:.0f} | "
            f"{r['final_mmd2']:.3g} | {r['nll']['nll']:.2f} ({r['nll']['k']}) | "
            + (f"{ais['nll']:.2f} +- {ais['sem']:.2f} |" if ais else "n/a |")
        )
    ind = result.get("independent_pixels")
    if ind:
        lines.append(
            f"| independent pixels (training marginals; reference) | | | | | | | | {ind['mmd2']:.3g} | "
            f"{ind['nll']:.2f} (exact) | "
            + (f"{ind['nll_ais_points']:.2f} (exact) |" if "nll_ais_points" in ind else "n/a |")
        )
    s = result["summary"]
    if "epoch_speedup" in s:
        lines += [
            "",
            f"{s['candidate']} vs {s['reference']}: per-epoch speed-up {s['epoch_speedup']:.2f}x wall "
            f"({s['epoch_speedup_cpu']:.2f}x CPU time; FLOP ratio {s['flop_ratio_per_epoch']:.2f}); goal >= 5x: "
            f"{'met' if s['goal_epoch_speedup_5x'] else 'NOT met'}. Time to reach {s['reference']}'s final curve "
            f"MMD^2 {s['target_mmd2']:.3g}: "
            + _reached(s)
            + f"; goal <= 1/5: {'met' if s['goal_time_to_target_one_fifth'] else 'NOT met'}.",
        ]
    first = next((r for r in result["algorithms"].values() if r.get("ais_nll")), None)
    if first:
        a = first["ais_nll"]
        lines += [
            "",
            f"NLL: importance sampling with K particles on the first {first['nll']['points']} test images (a "
            "stochastic upper bound; DDC-HM's evaluation-only proposal can leave it tens of nats loose). AIS NLL: "
            f"annealed importance sampling on the first {a['points']} test images, {a['chains']} chains, "
            f"{a['temperatures']} temperatures, Gibbs sweeps (`wakesleep.eval.ais_log_likelihood`), +- its "
            "standard error over images."
            + (
                f" {s['candidate']} minus {s['reference']}, paired over the same images: "
                f"{s['ais_nll_difference']['mean']:+.1f} +- {s['ais_nll_difference']['sem']:.1f} nats."
                if s.get("ais_nll_difference")
                else ""
            ),
        ]
    lines += [
        "",
        "Wall times on a shared machine are inflated by other processes; CPU time is the steadier figure "
        "for single-threaded runs. FLOPs: matrix products (torch.utils.flop_counter, forward + backward) plus "
        "DDC-HM's Cholesky factorisations and solves (analytic).",
        "",
    ]
    return "\n".join(lines)
