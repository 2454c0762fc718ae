"""Benchmark reports: ``report.json`` (every number with its settings), ``report.md`` (the tables a
person reads first), and PNG plots (accuracy vs synthetic ratio, the guidance sweep, samples)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from synthaug.files import write_bytes_atomic, write_text_atomic
from synthaug.grids import save_png, spread_classes, tile_images


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.{digits}f}"


def arm_rows(setting: dict) -> list[list[str]]:
    """Rows of the headline table for one low-data setting: arm, top-1 +- CI, macro-F1, gain, p."""
    rows = []
    for name, arm in setting["arms"].items():
        t, f = arm["top1"], arm["macro_f1"]
        gain = arm.get("gain_over_real")
        rows.append([
            str(setting["shots_per_class"] or "all"),
            name,
            f"{pct(t['mean'])} ± {pct(t['ci95'])}",
            f"{pct(f['mean'])}",
            "—" if gain is None else f"{100 * gain['mean']:+.1f} ± {pct(gain['ci95'])}",
            "—" if gain is None else f"{gain['p_value']:.3f}{' *' if gain['significant'] else ''}",
        ])
    return rows


def kid_text(q: dict) -> str:
    """KID x1000 with its spread over subsets; with one subset of all n images there is no spread."""
    spread = f" ± {1000 * q['kid_std']:.1f}" if q["kid_subset_size"] < q["n"] else ""
    return f"{1000 * q['kid']:.1f}{spread} (floor {1000 * q['floor_kid']:.1f})"


def quality_rows(report: dict) -> list[list[str]]:
    rows = []
    for s in report["settings"]:
        q = s["quality"]
        cas = s["arms"]["synthetic only (CAS)"]["top1"]
        rows.append([
            str(s["shots_per_class"] or "all"),
            f"{q['fid']:.1f} (floor {q['floor_fid']:.1f})",
            kid_text(q),
            str(q["n"]),
            pct(q["conditioning"]["accuracy"]),
            f"{pct(cas['mean'])} ± {pct(cas['ci95'])}",
        ] + ([pct(q["faces"]["detection_rate"]), f"{q['faces']['mean_confidence']:.3f}"] if "faces" in q else []))
    return rows


def sweep_rows(report: dict) -> list[list[str]]:
    rows = []
    for p in report["guidance_sweep"]["points"]:
        q, d = p["quality"], p["downstream_top1"]
        rows.append([f"{p['guidance']:g}", f"{q['fid']:.1f}", f"{1000 * q['kid']:.1f}", pct(q["conditioning"]["accuracy"]),
                     f"{pct(d['mean'])} ± {pct(d['ci95'])}"])
    return rows


def sweep_verdict(sweep: dict) -> str:
    """One sentence on the guidance sweep: the best scale by mean, and whether its interval separates it."""
    points = sweep["points"]
    best = max(points, key=lambda p: p["downstream_top1"]["mean"])
    if len(points) == 1:
        return f"Only one guidance scale ({best['guidance']:g}) was measured, so the sweep ranks nothing; list more in benchmark.guidance_sweep."
    b = best["downstream_top1"]
    overlap = any(p is not best and p["downstream_top1"]["mean"] + p["downstream_top1"]["ci95"] >= b["mean"] - b["ci95"]
                  for p in points)
    return (f"Best downstream guidance: **{best['guidance']:g}** (by mean; "
            + ("its 95% interval overlaps another scale's, so the difference is not established)." if overlap
               else "its 95% interval does not overlap the others')."))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


ARM_HEADER = ["shots/class", "arm", "top-1 % (mean ± 95% CI)", "macro-F1 %", "gain vs real (pp)", "paired p"]
QUALITY_HEADER = ["shots/class", "FID vs real test", "KID x1000", "n", "conditioning acc. %", "CAS top-1 %"]
SWEEP_HEADER = ["guidance", "FID", "KID x1000", "conditioning acc. %", "downstream top-1 %"]


def render_markdown(report: dict) -> str:
    d, c = report["dataset"], report["classifier"]
    quality_header = QUALITY_HEADER + (["faces detected %", "MTCNN confidence"] if any("faces" in s["quality"] for s in report["settings"]) else [])
    sweep = report["guidance_sweep"]
    parts = [
        f"# synthaug benchmark: {report['recipe']['name']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Dataset: `{d['spec']}` ({d['train_images']} training / {d['test_images']} test images, {d['classes']} classes, "
        f"target: {d['target']}). Machine: {report['machine']}. Total time: {report['total_s']:.0f} s.",
        "",
        "## Does synthetic data help? (real test split)",
        "",
        f"Classifier `{c['model']}` (weights: {c['pretrained']}), {c['steps']} steps of {c['batch_size']} images at "
        f"{c['resolution']} px for every arm, seeds {c['seeds']}. Intervals are 95% t-intervals over seeds; the gain is "
        "paired by seed, and * marks p < 0.05 (paired t-test).",
        "",
        markdown_table(ARM_HEADER, [r for s in report["settings"] for r in arm_rows(s)]),
        "",
        "## Generator quality",
        "",
        "FID/KID compare n synthetic images with n real test images; the floor compares n real training images with the "
        "same n real test images (KID's ± is its spread over subsets, shown when the subset is smaller than n). "
        f"Inception weights sha256 `{(report['fid_weights']['sha256'] or 'unknown')[:16]}…` "
        f"({report['fid_weights']['source']}), resize: {report['fid_resize']}. Conditioning accuracy: a judge trained on every "
        f"real training image ({pct(report['judge']['test_score']['top1'])}% on the real test split) labels the synthetic images. "
        "CAS: a classifier trained on synthetic images only, tested on real ones.",
        "",
        markdown_table(quality_header, quality_rows(report)),
        "",
        f"## Guidance sweep (shots/class {sweep['shots_per_class'] or 'all'}, real + synthetic x{sweep['ratio']:g})",
        "",
        markdown_table(SWEEP_HEADER, sweep_rows(report)),
        "",
        sweep_verdict(sweep),
        "",
        "## Provenance",
        "",
    ]
    for s in report["settings"]:
        g = s["generator"]
        parts.append(f"- shots/class {s['shots_per_class'] or 'all'}: generator `{g['run']}` trained on {g['train_images']} real "
                     f"images (sources sha256 `{g['train_sources_sha256'][:16]}…`, the same subset as the classifier), "
                     f"weights sha256 `{g['weights_sha256'][:16]}…`; synthetic set `{s['synthetic']['folder']}`.")
    parts += ["", "Timings (s): " + ", ".join(f"{k} {v:g}" for k, v in report["timings_s"].items()) + ".", "",
              "Plots: `accuracy_vs_ratio.png`, `guidance_sweep.png`, `samples.png` (per class: real images left, "
              "synthetic right). Every number: `report.json`.", ""]
    return "\n".join(parts)


def save_figure(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def plot_accuracy_vs_ratio(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for s in report["settings"]:
        arms = s["arms"]
        xs, ys, es = [0.0], [arms["real"]["top1"]["mean"]], [arms["real"]["top1"]["ci95"]]
        for arm in arms.values():
            spec = arm["arm"]
            if spec["real"] and spec["synthetic"] and spec["ratio"] is not None and not spec["augment"]:
                xs.append(spec["ratio"])
                ys.append(arm["top1"]["mean"])
                es.append(arm["top1"]["ci95"])
        label = f"{s['shots_per_class'] or 'all'} shots/class"
        line = ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in es], marker="o", capsize=3, label=label)
        aug = arms["real + classic aug"]["top1"]
        ax.axhline(100 * aug["mean"], color=line[0].get_color(), linestyle=":", linewidth=1)
    ax.plot([], [], "k:", linewidth=1, label="real + classic augmentation")
    ax.set_xlabel("synthetic images per real image (0 = real only)")
    ax.set_ylabel("top-1 accuracy on real test (%)")
    ax.set_title(f"{report['recipe']['name']}: accuracy vs synthetic ratio (95% CI over seeds)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_guidance_sweep(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["guidance_sweep"]["points"]
    g = [p["guidance"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(g, [p["quality"]["fid"] for p in points], "o-", color="tab:red", label="FID (lower is better)")
    ax.plot(g, [p["quality"]["floor_fid"] for p in points], "--", color="tab:red", alpha=0.5, label="FID floor (real vs real)")
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("FID")
    ax2 = ax.twinx()
    ax2.plot(g, [100 * (p["quality"]["conditioning"]["accuracy"] or 0) for p in points], "s-", color="tab:blue", label="conditioning accuracy")
    ax2.errorbar(g, [100 * p["downstream_top1"]["mean"] for p in points], yerr=[100 * p["downstream_top1"]["ci95"] for p in points],
                 fmt="^-", color="tab:green", capsize=3, label="downstream top-1")
    ax2.set_ylabel("%")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="best")
    ax.set_title("guidance: quality vs conditioning vs downstream accuracy")
    fig.tight_layout()
    save_figure(fig, path)


def sample_grid(real, syn, per_side: int = 4, max_rows: int = 10) -> np.ndarray:
    """Per class: ``per_side`` real images, a blank, then ``per_side`` synthetic ones."""
    from synthaug.shards import held_classes, map_labels

    rng = np.random.default_rng(0)
    classes = spread_classes(real.num_classes, max_rows)
    syn_labels = map_labels(syn.class_names, real.class_names, present=held_classes(syn))[syn.labels] if (syn.labels >= 0).all() else syn.labels
    blank = np.full(real.images.shape[1:], 255, dtype=np.uint8)
    tiles = []
    for c in classes:
        for pool, labels in ((real.images, real.labels), (syn.images, syn_labels)):
            rows = np.flatnonzero(labels == c) if real.num_classes > 1 else np.arange(len(pool))
            pick = rng.choice(rows, size=min(per_side, len(rows)), replace=False) if len(rows) else []
            tiles += [pool[i] for i in pick] + [blank] * (per_side - len(pick))
            if pool is real.images:
                tiles.append(blank)
    return tile_images(np.stack(tiles), 2 * per_side + 1)


def write_report(report: dict, out: Path, real, syn) -> None:
    """report.json, report.md and the three plots in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    write_text_atomic(out / "report.md", render_markdown(report))
    plot_accuracy_vs_ratio(report, out / "accuracy_vs_ratio.png")
    plot_guidance_sweep(report, out / "guidance_sweep.png")
    save_png(sample_grid(real, syn), out / "samples.png", min_side=600)
