"""Benchmark reports: ``report.json`` (every number with its settings), ``report.md`` (the answer first, then
the tables), and PNG plots (accuracy vs synthetic ratio, the guidance sweep, samples, memorization pairs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from synthaug.files import write_bytes_atomic, write_text_atomic
from synthaug.grids import label_rows, save_png, spread_classes, tile_images, upscale


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.{digits}f}"


def shots_text(setting: dict) -> str:
    return str(setting["shots_per_class"] or "all")


def per_class_text(setting: dict) -> str:
    """How many real images per class a setting has, in words: what was asked, and what the classes hold where that is
    less (a class holding 6 images gives 6 of '10 per class'), or the range for all images."""
    shots, held = setting["shots_per_class"], setting.get("per_class")  # held: [fewest, most] per class; older reports lack it
    if held is None:
        return f"{shots or 'all'} real images per class"
    low, high = held
    span = f"{low}" if low == high else f"{low}-{high}"
    if not shots:
        return f"all real images ({span} per class)"
    if low < shots:
        return f"{shots} real images per class asked (the classes hold {span})"
    return f"{shots} real images per class"


def dataset_title(report: dict) -> str:
    """What a report is about: the dataset (its name), and the recipe when the two differ."""
    name, recipe = report["dataset"].get("name"), report["recipe"]["name"]
    return recipe if not name or name == recipe else f"{name} (recipe {recipe})"


def interval(s: dict) -> str:
    return f"{pct(s['mean'])} ± {pct(s['ci95'])}"


def images_text(counts: dict | None) -> str:
    """The images an arm's classifiers drew from: real + synthetic (a filtered set may supply fewer than asked)."""
    if not counts:
        return "—"
    return f"{counts['real']:,} + {counts['synthetic']:,}" if counts["synthetic"] else f"{counts['real']:,}"


def arm_rows(setting: dict) -> list[list[str]]:
    """Rows of the test table for one low-data setting: arm, images, top-1 +- CI, macro-F1, gain over real only, p."""
    rows = []
    for name, arm in setting["arms"].items():
        gain = arm.get("gain_over_real")
        rows.append([
            shots_text(setting),
            name,
            images_text(arm.get("training_images")),
            interval(arm["top1"]),
            pct(arm["macro_f1"]["mean"]),
            "—" if gain is None else f"{100 * gain['mean']:+.1f} ± {pct(gain['ci95'])}",
            "—" if gain is None else f"{gain['p_value']:.3f}{' *' if gain['significant'] else ''}",
        ])
    return rows


def same_method(a: dict, b: dict) -> bool:
    return (a["guidance"], list(a["strengths"]), a["min_confidence"]) == (b["guidance"], list(b["strengths"]), b["min_confidence"])


def method_arm(setting: dict, results: dict, method: dict, ratio: float) -> str | None:
    """The name of the arm in ``results`` that adds ``method``'s synthetic set at ``ratio`` to real + classic augmentation."""
    sets = setting["synthetic_sets"]
    return next((name for name, r in results.items() if r.get("synthetic_set") in sets and r["arm"]["ratio"] == ratio
                 and r["arm"]["real"] and r["arm"]["augment"] and same_method(sets[r["synthetic_set"]]["method"], method)), None)


def validation_rows(setting: dict) -> list[list[str]]:
    """The candidates compared on the validation split, the chosen ones marked."""
    c = setting["choices"]
    best = method_arm(setting, setting["validation"], c["method"], c["ratio"])
    marks = {c["baseline"]: " **(chosen baseline)**", best: " **(chosen)**" if c.get("chosen", True) else " (best candidate, not chosen)"}
    return [[shots_text(setting), name + marks.get(name, ""), images_text(r.get("training_images")),
             interval(r["top1"])] for name, r in setting["validation"].items()]


def kid_text(q: dict) -> str:
    """KID x1000 with its 95% interval (or, on subsets, its spread over subsets), and its floor."""
    if "kid_ci95" in q:
        low, high = q["kid_ci95"]
        return f"{1000 * q['kid']:.1f} [{1000 * low:.1f}, {1000 * high:.1f}] (floor {1000 * q['floor_kid']:.1f})"
    spread = f" ± {1000 * q['kid_std']:.1f}" if q["kid_subset_size"] < q["n"] else ""
    return f"{1000 * q['kid']:.1f}{spread} (floor {1000 * q['floor_kid']:.1f})"


def fid_text(q: dict) -> str:
    ci = f" [{q['fid_ci95'][0]:.1f}, {q['fid_ci95'][1]:.1f}]" if "fid_ci95" in q else ""
    return f"{q['fid']:.1f}{ci} (floor {q['floor_fid']:.1f})"


def memorization_text(q: dict) -> str:
    """Inception / pixels: the share of close images; for variations the share close to a training image other
    than their own source (copying proper), then the share within the threshold of their own source."""
    m = q.get("memorization")
    if not m:
        return "—"
    if "copying" in m["inception"]:
        text = (f"copying {pct(m['inception']['copying']['share'])} / {pct(m['pixels']['copying']['share'])}; near own source "
                f"{pct(m['inception']['own_source']['within_threshold'])} / {pct(m['pixels']['own_source']['within_threshold'])}")
    else:
        text = f"{pct(m['inception']['share'])} / {pct(m['pixels']['share'])}"
    off = m.get("off_distribution")
    return text + (f" (off the data: {off['ratio']:.1f}x the test distance)" if off else "")


def conditioning_text(q: dict) -> str:
    """The conditioning accuracy, which judges scored it, and their top-1 on the real test split to compare with."""
    c = q["conditioning"]
    judges = c.get("judges")
    if c["accuracy"] is None or not judges:
        return pct(c["accuracy"])
    who = ("half judges" if not judges["full_judge"] else "full judge" if not judges["cross_fitted"]
           else f"half judges for {judges['cross_fitted']}, full judge for {judges['full_judge']}")
    return f"{pct(c['accuracy'])} ({who}; real test {pct(judges['real_test_top1'])})"


def has_faces(report: dict) -> bool:
    return any("faces" in (syn["quality"] or {}) for s in report["settings"] for syn in s["synthetic_sets"].values())


def quality_rows(report: dict) -> list[list[str]]:
    """Per measured synthetic set: FID and KID with intervals and floors, n, conditioning accuracy, CAS, memorization
    (and MTCNN faces next to real faces, for face datasets)."""
    rows, faces = [], has_faces(report)
    for s in report["settings"]:
        cas = next((a for a in s["arms"].values() if not a["arm"]["real"]), None)
        labels = [syn["label"] for syn in s["synthetic_sets"].values() if syn["quality"] is not None]
        for key, syn in s["synthetic_sets"].items():
            q = syn["quality"]
            if q is None:
                continue
            label = syn["label"]
            if labels.count(label) > 1 and "ratio" in syn:  # the validation candidate and the larger test set of one method
                label += f" (drawn for x{syn['ratio']:g})"
            if q.get("fid") is None:  # too few images to measure
                rows.append([shots_text(s), label, q.get("note", "n/a"), "—", str(q["n"]), "—", "—", "—"] + ["—", "—"] * faces)
                continue
            row = [shots_text(s), label, fid_text(q), kid_text(q), str(q["n"]), conditioning_text(q),
                   interval(cas["top1"]) if cas is not None and cas.get("synthetic_set") == key else "—", memorization_text(q)]
            if faces:
                row += [f"{pct(q['faces']['detection_rate'])} ({pct(q['faces_real']['detection_rate'])})",
                        f"{q['faces']['mean_confidence']:.3f} ({q['faces_real']['mean_confidence']:.3f})"] if "faces" in q else ["—", "—"]
            rows.append(row)
    return rows


def sweep_points(setting: dict) -> list[dict]:
    """The guidance candidates of one setting: guidance, quality and validation accuracy."""
    points, ratio = [], setting["choices"]["ratio"]
    for syn in setting["synthetic_sets"].values():
        m = syn["method"]
        if syn.get("ratio", ratio) != ratio:  # a larger set of the chosen method, drawn for the test arms
            continue
        name = method_arm(setting, setting["validation"], m, ratio)
        if not m["strengths"] and not m["min_confidence"] and (syn["quality"] or {}).get("fid") is not None and name:
            points.append({"guidance": m["guidance"], "quality": syn["quality"], "val_top1": setting["validation"][name]["top1"]})
    return sorted(points, key=lambda p: p["guidance"])


def sweep_rows(setting: dict) -> list[list[str]]:
    return [[shots_text(setting), f"{p['guidance']:g}", f"{p['quality']['fid']:.1f}", f"{1000 * p['quality']['kid']:.1f}",
             pct(p["quality"]["conditioning"]["accuracy"]), interval(p["val_top1"])] for p in sweep_points(setting)]


def sweep_verdict(setting: dict) -> str:
    """One sentence on the guidance scales: which one validation chose, and whether its interval separates it."""
    points = sweep_points(setting)
    if not points:
        return "No guidance scale was compared."
    chosen = setting["choices"]["guidance"]
    if len(points) == 1:
        return f"Only one guidance scale ({chosen:g}) was tried, so nothing was chosen; list more in benchmark.guidance_sweep."
    best = next(p for p in points if p["guidance"] == chosen)["val_top1"]
    overlap = any(p["guidance"] != chosen and p["val_top1"]["mean"] + p["val_top1"]["ci95"] >= best["mean"] - best["ci95"]
                  for p in points)
    return (f"Guidance chosen on validation: **{chosen:g}** (highest mean; "
            + ("its 95% interval overlaps another scale's, so the difference is not established)." if overlap
               else "its 95% interval does not overlap the others')."))


def worth_text(setting: dict) -> str:
    w = setting["summary"]["worth_real"]
    if w is None:
        return ""
    low, high = w["ci95"]
    return (f"Worth real images: the headline arm scores like real + classic augmentation with {w['how']} "
            f"{w['per_class']:.0f} real images per class (95% interval {low:.0f}-{high:.0f}), from {w['real_per_class']} real "
            "ones (curve: " + ", ".join(f"{p['per_class']:.0f}/class {pct(p['top1'])}%" for p in w["curve"]) + ").")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


ARM_HEADER = ["shots/class", "arm", "images (real + synthetic)", "top-1 % (mean ± 95% CI)", "macro-F1 %", "gain vs real (pp)",
              "paired p"]
VALIDATION_HEADER = ["shots/class", "candidate (validation split)", "images (real + synthetic)", "top-1 % (mean ± 95% CI)"]
QUALITY_HEADER = ["shots/class", "synthetic set", "FID [95% CI] (floor)", "KID x1000 [95% CI] (floor)", "n",
                  "conditioning acc. % (judge; its real test top-1)", "CAS top-1 %", "memorization % (Inception / pixels)"]
FACES_HEADER = ["faces detected % (real)", "MTCNN confidence (real)"]
SWEEP_HEADER = ["shots/class", "guidance", "FID", "KID x1000", "conditioning acc. %", "validation top-1 %"]


def gain_text(g: dict) -> str:
    """A gain with the interval its verdict rests on: the wider of the seed and test-image intervals (older reports
    carry only the seed one)."""
    d = g.get("decisive")
    if d is None:
        return f"{100 * g['mean']:+.1f} points (95% CI ±{pct(g['ci95'])}, paired p = {g['p_value']:.3f})"
    t = g.get("test_sample")
    seeds = f"over seeds ±{pct(g['ci95'])}, paired p = {g['p_value']:.3f}"
    if t is None:
        return f"{100 * g['mean']:+.1f} points (95% interval {100 * d['low']:+.1f} to {100 * d['high']:+.1f}, {seeds})"
    return (f"{100 * g['mean']:+.1f} points (95% interval {100 * d['low']:+.1f} to {100 * d['high']:+.1f}, the wider of: "
            f"{seeds}; over the evaluation images {100 * t['low']:+.1f} to {100 * t['high']:+.1f})")


def noise_text(sources: dict | None) -> str:
    """Which sources of noise the intervals cover, and which each setting holds fixed."""
    if not sources:
        return ""
    return ("Intervals cover " + "; ".join(sources["varied_by_seed"]) + " (varied by seed), and "
            + "; ".join(sources["covered_by_bootstrap"]) + ". Held fixed (one draw each): "
            + ", ".join(sources["held_fixed"]) + ".")


def answer_lines(report: dict) -> list[str]:
    """The plain answer, one paragraph per setting."""
    lines = []
    for s in report["settings"]:
        summary, c = s["summary"], s["choices"]
        g = summary["gain"]
        text = per_class_text(s)
        chosen = c.get("chosen", True)
        what = "Chosen on the validation split (never on test)" if chosen else "Best candidate on validation, not chosen"
        lines += [f"**{text[0].upper() + text[1:]}.** {summary['verdict']}",
                  "",
                  f"- {what}: {c['label']}; baseline {summary['baseline_arm']}. On test: {gain_text(g)}; minimum "
                  f"detectable effect at 80% power: {pct(summary['min_detectable_effect'])} points.",
                  *([f"- Choice rule: {c['rule']}. Its validation gain over real + classic aug: "
                     f"{gain_text(c['validation_gain_over_classic_aug'])}."] if "rule" in c else []),
                  *([f"- Against real + classic aug (the same training without the synthetic images): {gain_text(v)}."]
                    if (v := summary.get("gain_vs_classic_aug")) and summary["baseline_arm"] != "real + classic aug" else []),
                  f"- Highest test score among the synthetic arms: {summary['best_synthetic_arm_by_test']} "
                  "(picked on test, so optimistic; shown for completeness)."]
        for x in c.get("not_candidates", []):
            lines.append(f"- Not a candidate: {x['label']} kept {x['kept']:,} of the {x['asked']:,} synthetic images "
                         f"x{c['ratio']:g} asks for (less than {pct(c.get('min_kept_share', 0.1), 0)}%), so it was neither "
                         "chosen nor ranked.")
        if worth_text(s):
            lines.append(f"- {worth_text(s)}")
        headline_set = s["synthetic_sets"].get(s["arm_sets"].get(summary["headline_arm"], ""), {})
        q = headline_set.get("quality") or {}
        if q.get("memorization"):
            lines.append(f"- Memorization ({headline_set['label']}): {q['memorization']['verdict']}")
        lines.append("")
    return lines


def classifier_text(c: dict) -> str:
    """Which classifier and protocol (trained from scratch, fine-tuned, or a linear probe on a frozen backbone)."""
    if c.get("protocol") == "linear-probe" and c.get("description"):
        return c["description"]
    if c.get("pretrained", "none") == "none":
        return f"{c['model']}, trained from scratch"
    return f"{c['model']}, fine-tuned from ImageNet weights ({c['pretrained']})"


def render_markdown(report: dict) -> str:
    d, c = report["dataset"], report["classifier"]
    faces = has_faces(report)
    parts = [
        f"# synthaug benchmark: {dataset_title(report)}",
        "",
        f"Command: `{report['command']}`  ",
        f"Dataset: `{d['spec']}` ({d['train_images']} training / {d.get('val_images', 0)} validation / {d['test_images']} test "
        f"images, {d['classes']} classes, target: {d['target']}). Machine: {report['machine']}"
        f"{', ' + str(report['processes']) + ' processes' if report.get('processes', 1) > 1 else ''}. "
        f"Total time: {report['total_s']:.0f} s.",
        "",
        "## The answer",
        "",
        *answer_lines(report),
        "## Does synthetic data help? (real test split)",
        "",
        f"Classifier: {classifier_text(c)}; {c['steps']} steps of {c['batch_size']} images at "
        f"{c['resolution']} px for every arm, seeds {c['seeds']}. Intervals in this table are 95% t-intervals over seeds; "
        "gains are paired by seed (the same seed starts every arm from the same weights), and * marks p < 0.05 (paired "
        "t-test); the answer above also gives a paired bootstrap over the test images and rests on the wider interval. "
        f"{noise_text((report.get('provenance') or {}).get('replicates'))} "
        "Every synthetic arm is on top of classic augmentation; `Nx real` arms have N times the real images.",
        "",
        markdown_table(ARM_HEADER, [r for s in report["settings"] for r in arm_rows(s)]),
        "",
        "## Choices made on the validation split",
        "",
        "Guidance, variation strength, filter threshold and the baseline were chosen by validation accuracy "
        f"(real + classic augmentation + synthetic at x{report['settings'][0]['choices']['ratio']:g}); the test split was "
        "scored once per arm and seed, after.",
        "",
        markdown_table(VALIDATION_HEADER, [r for s in report["settings"] for r in validation_rows(s)]),
        "",
        *[sweep_verdict(s) + f" ({shots_text(s)} shots/class)" for s in report["settings"]],
        "",
        markdown_table(SWEEP_HEADER, [r for s in report["settings"] for r in sweep_rows(s)]),
        "",
        "## Generator quality and memorization",
        "",
        "FID/KID compare n synthetic images with n real test images, with 95% jackknife intervals; the floor compares n "
        "real training images with the same test images. Inception weights sha256 "
        f"`{(report['fid_weights']['sha256'] or 'unknown')[:16]}…` ({report['fid_weights']['source']}), resize: "
        f"{report['fid_resize']}. Conditioning accuracy: plain samples are labelled by a judge trained on every real "
        f"training image, the generator's own included ({pct(report['judge']['test_score']['top1'])}% on the real test split, "
        "the \"full judge\"); real-guided variations by two cross-fitted \"half judges\", each trained on one half of the "
        "real training images and scoring only the variations of the other half's, so that no image is scored by a judge "
        "that saw its source. Each accuracy is shown beside the scoring judges' top-1 on the real test split, the like "
        "for like comparison. CAS: a classifier trained on synthetic images only, tested on real ones. Memorization: the "
        "share of synthetic images closer to one of the generator's training images than 95% of real test images are "
        "(about 5% for images that are not copies). Real-guided variations start from a training image and sit close to "
        "it by construction, so for them \"copying\" counts closeness to a training image other than their own source, and "
        "\"near own source\" the share within that distance of it. \"Off the data\": the synthetic images' median distance "
        "to the nearest training image is over 1.5x the real test images' (Inception space), so a low share means images "
        "unlike the data, not original ones.",
        "",
        markdown_table(QUALITY_HEADER + (FACES_HEADER if faces else []), quality_rows(report)),
        "",
        "## Provenance",
        "",
    ]
    parts += provenance_lines(report.get("provenance"))
    for s in report["settings"]:
        g = s["generator"]
        parts.append(f"- shots/class {shots_text(s)}: generator `{g['run']}` ({g.get('kimg')} kimg) trained on {g['train_images']} "
                     f"real images (sources sha256 `{g['train_sources_sha256'][:16]}…`, the same subset as the classifiers), "
                     f"weights sha256 `{g['weights_sha256'][:16]}…`.")
    parts += ["", "Timings (s): " + ", ".join(f"{k} {v:g}" for k, v in report["timings_s"].items()) + ".", "",
              "Plots: `accuracy_vs_ratio.png`, `guidance_sweep.png`, `samples.png` (per class: real images left, synthetic "
              "right), `memorization-<shots>.png` (closest synthetic images, top, above their nearest training images). "
              "Every number: `report.json`.", ""]
    return "\n".join(parts)


def provenance_lines(p: dict | None) -> list[str]:
    """The code, date and machine of this invocation, and a line for every stage kind reused from an earlier one."""
    if not p:
        return []
    commit = p.get("commit")
    code = (f"commit `{commit[:12]}`{' with uncommitted changes' if p.get('dirty') else ''}" if commit
            else "no git checkout (an installed package)")
    lines = [f"- This invocation: synthaug {p.get('synthaug')}, {code}, {p.get('date')}, recipe sha256 "
             f"`{(p.get('recipe_sha256') or '')[:16]}…`, {len(p.get('cpu_flags', []))} CPU flags recorded in report.json."]
    for r in p.get("reused_stages", []):
        inv = r["invocation"]
        by = (f"invocation {inv.get('id')} ({inv.get('date')}, commit `{(inv.get('commit') or 'unknown')[:12]}`"
              f"{' with uncommitted changes' if inv.get('dirty') else ''}, recipe sha256 `{(inv.get('recipe_sha256') or 'unknown')[:16]}…`)"
              if inv.get("date") else f"an earlier invocation that recorded no provenance ({inv.get('id')})")
        lines.append(f"- **Reused** {r['stages']} {r['kind']} stage{'s' if r['stages'] != 1 else ''} written by {by}.")
    for run in p.get("reused_generators", []):
        lines.append(f"- **Reused** the finished generator `{run}` (trained by an earlier invocation).")
    return lines


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

    n = len(report["settings"])
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), dpi=110, squeeze=False)
    for ax, s in zip(axes[0], report["settings"]):
        arms = s["arms"]
        curves: dict[str, list] = {}
        for name, arm in arms.items():
            spec = arm["arm"]
            if spec["real"] and spec["synthetic"] and spec["ratio"] is not None:
                label = s["synthetic_sets"][s["arm_sets"][name]]["label"]
                curves.setdefault(label, []).append((spec["ratio"], arm["top1"]))
        for label, points in curves.items():
            points.sort(key=lambda p: p[0])
            ax.errorbar([p[0] for p in points], [100 * p[1]["mean"] for p in points], yerr=[100 * p[1]["ci95"] for p in points],
                        marker="o", capsize=3, label=label)
        for name, style in (("real", "k--"), ("real + classic aug", "k:")):
            ax.axhline(100 * arms[name]["top1"]["mean"], color="k", linestyle=style[1:], linewidth=1, label=name)
        ax.set_xlabel("synthetic images per real image (on top of classic augmentation)")
        ax.set_ylabel("top-1 on real test (%)")
        ax.set_title(per_class_text(s), fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{dataset_title(report)}: accuracy vs synthetic ratio (95% CI over seeds)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_guidance_sweep(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(report["settings"])
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), dpi=110, squeeze=False)
    for ax, s in zip(axes[0], report["settings"]):
        points = sweep_points(s)
        g = [p["guidance"] for p in points]
        ax.plot(g, [p["quality"]["fid"] for p in points], "o-", color="tab:red", label="FID (lower is better)")
        ax.plot(g, [p["quality"]["floor_fid"] for p in points], "--", color="tab:red", alpha=0.5, label="FID floor")
        ax.set_xlabel("guidance scale")
        ax.set_ylabel("FID")
        ax2 = ax.twinx()
        ax2.plot(g, [100 * (p["quality"]["conditioning"]["accuracy"] or 0) for p in points], "s-", color="tab:blue",
                 label="conditioning accuracy")
        ax2.errorbar(g, [100 * p["val_top1"]["mean"] for p in points], yerr=[100 * p["val_top1"]["ci95"] for p in points],
                     fmt="^-", color="tab:green", capsize=3, label="validation top-1")
        ax2.set_ylabel("%")
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="best")
        ax.set_title(per_class_text(s), fontsize=9)
    fig.suptitle(f"{dataset_title(report)}: guidance, quality vs conditioning vs validation accuracy")
    fig.tight_layout()
    save_figure(fig, path)


def sample_grid(real, *synthetic, per_side: int = 4, max_rows: int = 10) -> tuple[np.ndarray, list[str]]:
    """Per class: ``per_side`` real images, then a blank and ``per_side`` images of each synthetic set; rows labelled
    by class (the names are returned with the grid)."""
    from synthaug.shards import held_classes, map_labels

    rng = np.random.default_rng(0)
    classes = spread_classes(real.num_classes, max_rows)
    pools = [(real.images, real.labels)]
    for syn in synthetic:
        labels = map_labels(syn.class_names, real.class_names, present=held_classes(syn))[syn.labels] if (syn.labels >= 0).all() else syn.labels
        pools.append((syn.images, labels))
    blank = np.full(real.images.shape[1:], 255, dtype=np.uint8)
    tiles = []
    for c in classes:
        for k, (pool, labels) in enumerate(pools):
            rows = np.flatnonzero(labels == c) if real.num_classes > 1 else np.arange(len(pool))
            pick = rng.choice(rows, size=min(per_side, len(rows)), replace=False) if len(rows) else []
            tiles += ([blank] if k else []) + [pool[i] for i in pick] + [blank] * (per_side - len(pick))
    return tile_images(np.stack(tiles), len(pools) * (per_side + 1) - 1), [real.class_names[c] for c in classes]


def write_report(report: dict, out: Path, real, settings) -> None:
    """report.json, report.md and the plots in ``out``; ``settings`` are the benchmark's per-setting states
    (their synthetic sets give the sample and memorization grids)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    write_text_atomic(out / "report.md", render_markdown(report))
    plot_accuracy_vs_ratio(report, out / "accuracy_vs_ratio.png")
    plot_guidance_sweep(report, out / "guidance_sweep.png")
    top = max(settings, key=lambda s: len(s.train))
    headline = report["settings"][settings.index(top)]
    syn = top.sets[headline["arm_sets"][headline["summary"]["headline_arm"]]].syn
    grid, names = sample_grid(real, syn)
    grid = upscale(grid, 600)  # enlarge the images first, so the names are drawn sharp at their own size
    save_png(label_rows(grid, names) if real.num_classes > 1 else grid, out / "samples.png")
    for s, entry in zip(settings, report["settings"]):
        chosen = s.sets[entry["arm_sets"][entry["summary"]["headline_arm"]]]
        if chosen.grid.is_file():
            shutil.copyfile(chosen.grid, out / f"memorization-{shots_text(entry)}.png")
