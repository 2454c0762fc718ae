"""Time to quality: how long synthaug's recipe and the diffusers-example reference each train to reach a quality.

Both sides train on the same data (the recipe's real training split: the reference reads the same decoded
pixels, written once as PNG files), the same U-Net (built from the same recipe, so the same config and
parameter count), the same batch size, on the same machine, one after the other:

- synthaug: ``synthaug.generator.train.train_generator`` on the recipe (with ``--set`` overrides);
- the reference: a class-conditional ``UNet2DModel`` trained the way diffusers' examples train one
  (``harness.ReferenceMethod``: DDPM linear beta schedule, epsilon prediction, MSE, AdamW at lr 1e-4 with
  warm-up, gradient clipping, ``EMAModel``; data loaded and transformed from files every step).

Every ``--every-s`` seconds of training wall time (set-up included, snapshot saving excluded) each side's
EMA weights are snapshotted. synthaug's are taken from outside the library: its EMA is diffusers'
``EMAModel``, and for the length of the run the benchmark swaps in a subclass whose ``step`` snapshots the
EMA weights when a mark has passed (and stops the run at ``--budget-s``). After training, every snapshot
draws the same images (the same per-image seeds, spread evenly over the classes, with the recipe's
sampler, steps and guidance for both sides) and is judged against the real test split: FID and KID with
95% jackknife intervals (``synthaug.fid.fid_kid`` on Inception features), next to the
real-vs-real floor at the same n, and conditioning accuracy (digits: an RBF SVM on the real training
pixels; CUB: a logistic-regression probe on the Inception features of the real training images).

Headline: the reference's final FID is the target; each side's time to reach it is the wall time of its
first snapshot at or below it. The target of issue 16 is synthaug <= 1/3 of the reference's time.

Settings (``--set KEY=VALUE``): data and model-size keys (``data.*``, the U-Net's preset, channels,
levels, layers, dropout, and the batch size) apply to both sides; every other key (the method: objective,
schedule, learning rate, EMA, augmentation, precision, ...) to synthaug only. ``--variant NAME`` starts a
synthaug variant; the ``--set`` options after it belong to it. A reference measured earlier can be reused
(``--reference-from results/time_to_quality_digits.json``) when its data, model and evaluation match.

Usage:
    python benchmarks/bench_time_to_quality.py --data digits                    # ~10 min training per side
    python benchmarks/bench_time_to_quality.py --data cub32 --budget-s 1800 --every-s 300
    python benchmarks/bench_time_to_quality.py --data digits --reference-from results/time_to_quality_digits.json \\
        --variant recipe --variant vpred --set generator.prediction=v --tag vpred
    python benchmarks/bench_time_to_quality.py --quick                          # a smoke run, ~2 minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from harness import RECIPES, RESULTS, SHARED_DATA, ReferenceMethod, machine, reference_files, reference_training, rounded, write_result


@dataclass(frozen=True)
class DataChoice:
    """One dataset of the benchmark: the recipe synthaug trains on it and the defaults of a run."""

    recipe: str
    settings: tuple[str, ...]
    judge: str  # "svm" (pixels) or "probe" (Inception features)
    budget_s: float
    every_s: float
    fid_images: int


DATA = {
    "digits": DataChoice("digits.toml", (), "svm", budget_s=600, every_s=30, fid_images=300),
    # the new user's CUB run of issue 16: the GPU recipe at 32 px with the tiny preset and batch 64
    "cub32": DataChoice("cub.toml", (f"data.spec=cub:{SHARED_DATA / 'cub100'}", "data.resolution=32", "generator.preset=tiny",
                                     "generator.batch_size=64"), "probe", budget_s=2400, every_s=300, fid_images=500),
}
QUICK = {"digits": {"budget_s": 16, "every_s": 4, "fid_images": 40},
         "cub32": {"budget_s": 40, "every_s": 10, "fid_images": 50}}
QUICK_REFERENCE_WARMUP_STEPS = 10
QUICK_PROBE_IMAGES = 300

# Settings that apply to both sides: the data and the network's size (and the batch). Anything else is the method.
MODEL_KEYS = {"generator.preset", "generator.base_channels", "generator.channel_mult", "generator.layers_per_block",
              "generator.dropout", "generator.batch_size"}
FIXED_KEYS = {"run_dir", "generator.backend"}  # the benchmark sets the run folders; the reference is a U-Net


def setting_key(setting: str) -> str:
    return setting.split("=", 1)[0].strip()


def applies_to_both(setting: str) -> bool:
    key = setting_key(setting)
    return key.startswith("data.") or key in MODEL_KEYS


# -- snapshots on a wall-clock timer ----------------------------------------------------------------
class BudgetReached(Exception):
    """Raised from inside synthaug's training loop to stop it at the time budget."""


class Snapshots:
    """EMA weights taken every ``every_s`` seconds of training wall time, saved under ``folder``.

    The clock starts at construction; the time spent saving a snapshot is taken out of it, so a side is
    not charged for the benchmark's own bookkeeping.
    """

    clock = staticmethod(time.perf_counter)  # a test may swap in a clock of its own

    def __init__(self, folder: Path, every_s: float, budget_s: float):
        self.folder, self.every_s, self.budget_s = folder, every_s, budget_s
        folder.mkdir(parents=True, exist_ok=True)
        self.items: list[dict] = []
        self.next_mark = every_s
        self.paused = 0.0
        self.start = self.clock()

    def now(self) -> float:
        return self.clock() - self.start - self.paused

    def poll(self) -> tuple[float, bool, bool]:
        """(training time now, whether a snapshot is due, whether the budget is spent), from one reading of the clock."""
        at = self.now()
        return at, at >= self.next_mark, at >= self.budget_s

    def take(self, shadow_params, step: int, images: int, at: float) -> None:
        """Save the EMA weights of ``step``, reached at training time ``at``."""
        import torch

        t0 = self.clock()
        path = self.folder / f"snapshot-{len(self.items):03d}.pt"
        torch.save([p.detach().to("cpu", copy=True) for p in shadow_params], path)
        self.items.append({"time_s": round(at, 2), "step": step, "kimg": round(images / 1000, 3), "path": str(path)})
        while self.next_mark <= at:
            self.next_mark += self.every_s
        self.paused += self.clock() - t0


def train_synthaug(recipe, snapshots: Snapshots) -> dict:
    """``train_generator`` on ``recipe`` with its EMA snapshotted on ``snapshots``' clock, stopped at the budget."""
    from diffusers import training_utils

    from synthaug.generator.train import train_generator

    g = recipe.generator
    total_steps = max(1, math.ceil(g.duration_kimg * 1000 / g.batch_size))
    original = training_utils.EMAModel
    built, last = [], {}

    class TimedEMA(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

        def step(self, parameters):
            super().step(parameters)
            step = self.optimization_step
            at, due, over = snapshots.poll()
            last.update(step=step, at=at)
            done = step >= total_steps
            if due or done or over:
                snapshots.take(self.shadow_params, step, step * g.batch_size, at)
            if over and not done:
                raise BudgetReached

    training_utils.EMAModel = TimedEMA  # train_generator imports EMAModel from diffusers.training_utils when called
    stopped = False
    try:
        train_generator(recipe, fresh=True)
    except BudgetReached:
        stopped = True
    finally:
        training_utils.EMAModel = original
    if built and last and (not snapshots.items or snapshots.items[-1]["step"] != last["step"]):
        # the run ended on a step this benchmark did not count as the last: keep its final state too
        snapshots.take(built[-1].shadow_params, last["step"], last["step"] * g.batch_size, at=last["at"])
    if not built or not snapshots.items:
        raise RuntimeError("synthaug's training no longer builds its EMA with diffusers.training_utils.EMAModel, so this "
                           "benchmark cannot snapshot it on a timer; update train_synthaug() to the library's EMA.")
    final = snapshots.items[-1]
    return {"stopped_at_budget": stopped, "planned_steps": total_steps, "steps": final["step"], "train_s": final["time_s"],
            "images_per_s": round(final["kimg"] * 1000 / max(final["time_s"], 1e-9), 1)}


def train_reference(files, schema, base, method: ReferenceMethod, snapshots: Snapshots, device: str) -> dict:
    """The diffusers-example loop on the base recipe's U-Net and batch for ``snapshots.budget_s`` seconds."""
    import torch

    from synthaug.generator.backends import build_model

    torch.manual_seed(0)
    model, _ = build_model(base.generator, schema, torch.device(device))
    for s in reference_training(files, schema, model, method, base.generator.batch_size, device):
        at, due, over = snapshots.poll()
        if due or over:
            snapshots.take(s.ema.shadow_params, s.step, s.images, at)
        if over:
            break
    last = snapshots.items[-1]
    return {"steps": last["step"], "train_s": last["time_s"],
            "images_per_s": round(last["kimg"] * 1000 / max(last["time_s"], 1e-9), 1)}


# -- judging snapshots ------------------------------------------------------------------------------
class Yardstick:
    """FID/KID of n images against n real test images (jackknife 95% intervals) with the real-vs-real floor,
    and conditioning accuracy by a judge trained on the real training split."""

    def __init__(self, dataset, judge: str, n: int, device, probe_images: int = 0):
        from synthaug.fid import fid_kid
        from synthaug.quality import features, subsample
        from synthaug.seeds import numpy_rng
        from synthaug.weights.fid_inception import fid_weights_path

        train, test = dataset.split("train"), dataset.split("test")
        self.train_x, self.train_y = np.asarray(train.images), np.asarray(train.labels)
        test_x, test_y = np.asarray(test.images), np.asarray(test.labels)
        self.n = int(min(n, len(self.train_x), len(test_x)))
        self.device, self.kind = device, judge
        self.weights = fid_weights_path()
        pick = np.sort(numpy_rng("quality", 0, "test").permutation(len(test_x))[: self.n])  # as quality.subsample draws
        self.test_features = features(test_x[pick], self.weights, device, cache=True)
        floor_features = features(subsample(self.train_x, self.n, "quality", 0, "train"), self.weights, device, cache=True)
        self.kid_subset = min(1000, self.n)
        self.floor = rounded(fid_kid(self.test_features, floor_features, self.kid_subset, 0))
        if judge == "svm":
            from sklearn.svm import SVC

            self.judge = SVC(gamma="scale").fit(self.flat(self.train_x), self.train_y)
            self.judge_accuracy = float(self.judge.score(self.flat(test_x), test_y))
            self.judge_about = "RBF SVM on the real training pixels; accuracy on every real test image"
        else:
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            rows = np.arange(len(self.train_x))
            if probe_images and probe_images < len(rows):
                rows = np.sort(np.random.default_rng(3).permutation(len(rows))[:probe_images])
            train_features = features(self.train_x[rows], self.weights, device, cache=True)
            self.judge = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
            self.judge.fit(train_features, self.train_y[rows])
            self.judge_accuracy = float(self.judge.score(self.test_features, test_y[pick]))
            self.judge_about = (f"logistic-regression probe on Inception features of {len(rows)} real training images; "
                                f"accuracy on the {self.n} real test images of the FID")

    @staticmethod
    def flat(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1) / 255.0

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> dict:
        from synthaug.fid import fid_kid
        from synthaug.quality import features

        f = features(images, self.weights, self.device)
        pred = self.judge.predict(self.flat(images) if self.kind == "svm" else f)
        q = rounded(fid_kid(self.test_features, f, self.kid_subset, 0))
        return {"fid": q["fid"], "fid_ci95": q["fid_ci95"], "kid": q["kid"], "kid_ci95": q["kid_ci95"],
                "conditioning_accuracy": round(float(np.mean(pred == labels)), 4)}

    def describe(self) -> dict:
        return {"n": self.n, "kid_subset_size": self.kid_subset, **{f"floor_{k}": v for k, v in self.floor.items()},
                "judge": self.judge_about, "judge_accuracy_on_real_test": round(self.judge_accuracy, 4)}


def side_generator(g_cfg, schema, scheduler_config: dict, sampling, device):
    """A :class:`~synthaug.generator.Generator` around a fresh network of ``g_cfg``'s architecture, into which
    snapshots are loaded; it samples as ``synthaug generate`` does."""
    import torch

    from synthaug.device import inference_dtype
    from synthaug.generator import Generator
    from synthaug.generator.backends import build_model

    dev = torch.device(device)
    model, _ = build_model(g_cfg, schema, dev)
    return Generator(None, model.eval(), schema, scheduler_config, dev, inference_dtype(dev), sampling)


def evaluate_snapshots(name: str, snapshots: Snapshots, gen, yardstick: Yardstick) -> list[dict]:
    """Each snapshot's EMA weights loaded into ``gen``, ``yardstick.n`` images drawn (seeds 0..) and judged."""
    import torch

    params = list(gen.denoiser.trainable_parameters())
    rows = []
    for item in snapshots.items:
        shadow = torch.load(item["path"], weights_only=True)
        if len(shadow) != len(params) or any(a.shape != b.shape for a, b in zip(shadow, params)):
            raise RuntimeError(f"{name}: a snapshot does not fit the network it is evaluated in")
        with torch.no_grad():
            for p, v in zip(params, shadow):
                p.copy_(v)
        start = time.perf_counter()
        images, labels = gen.sample(n=yardstick.n, seed=0)
        sample_s = time.perf_counter() - start
        row = {k: v for k, v in item.items() if k != "path"}
        row.update(yardstick(images.permute(0, 2, 3, 1).numpy(), labels.numpy()), sample_s=round(sample_s, 2))
        rows.append(row)
        print(f"[{name}] {row['time_s']:7.1f} s  {row['kimg']:8.1f} kimg  FID {row['fid']:7.2f} "
              f"[{row['fid_ci95'][0]:.2f}, {row['fid_ci95'][1]:.2f}]  accuracy {row['conditioning_accuracy']:.1%}")
    return rows


def time_to_reach(rows: list[dict], target: float) -> float | None:
    """Wall time of the first snapshot whose FID is at or below ``target`` (None: never)."""
    return next((r["time_s"] for r in rows if r["fid"] <= target), None)


# -- settings ---------------------------------------------------------------------------------------
class VariantAction(argparse.Action):
    """``--variant NAME``: a new synthaug variant; the ``--set`` options after it are its own."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.variants.append({"name": value, "settings": []})


class SetAction(argparse.Action):
    """``--set KEY=VALUE``: for the latest ``--variant``, or, before any, for every side it applies to."""

    def __call__(self, parser, namespace, value, option_string=None):
        (namespace.variants[-1]["settings"] if namespace.variants else namespace.settings).append(value)


def check_settings(settings: list[str], variants: list[dict]) -> None:
    for s in settings + [s for v in variants for s in v["settings"]]:
        if "=" not in s:
            raise SystemExit(f"error: --set {s!r} is not KEY=VALUE; write e.g. --set generator.lr=1e-3.")
        if setting_key(s) in FIXED_KEYS:
            raise SystemExit(f"error: --set {setting_key(s)} is chosen by this benchmark; remove it.")
    for v in variants:
        shared = [s for s in v["settings"] if applies_to_both(s)]
        if shared:
            raise SystemExit(f"error: --set {shared[0]} (variant {v['name']}) changes the data or the model size, which "
                             "both sides must share; give it before the first --variant.")
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names) or any(not n.replace("-", "").replace("_", "").isalnum() for n in names):
        raise SystemExit("error: variant names must be distinct and made of letters, digits, '-' and '_'.")


def recipes_for(choice: DataChoice, settings: list[str], variants: list[dict], work: Path):
    """The reference's recipe (the base recipe with the shared data and model settings) and each variant's."""
    from synthaug.recipe import load_recipe

    shared = [s for s in settings if applies_to_both(s)]
    base = load_recipe(RECIPES / choice.recipe, [*choice.settings, *shared, f"run_dir={work / 'reference-run'}"])
    out = {}
    for v in variants:
        out[v["name"]] = load_recipe(RECIPES / choice.recipe, [*choice.settings, *settings, *v["settings"],
                                                               f"run_dir={work / ('run-' + v['name'])}"])
    return base, out


def evaluation_key(base, yardstick_n: int, method: ReferenceMethod, data: str) -> dict:
    """What a reused reference measurement must match."""
    from synthaug.recipe import recipe_to_dict

    d = recipe_to_dict(base)
    model = {k: d["generator"][k.split(".", 1)[1]] for k in sorted(MODEL_KEYS)}
    key = {"data": data, "data_config": d["data"], "model": model, "fid_images": yardstick_n,
           "sampling": {k: d["sampling"][k] for k in ("sampler", "steps", "guidance", "seed")},
           "method": dataclasses.asdict(method)}
    return json.loads(json.dumps(key))  # as a result file holds it (tuples as lists)


# -- report -----------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    def fid(r):
        return f"{r['fid']:.2f} [{r['fid_ci95'][0]:.2f}, {r['fid_ci95'][1]:.2f}]"

    def secs(t):
        return "not reached" if t is None else f"{t:,.0f} s"

    real = result["real"]
    lines = [f"# Time to quality: {result['data']}", "",
             f"{result['machine']}, {result['date']}. FID at n = {real['n']} against the real test split (real-vs-real floor "
             f"{real['floor_fid']:.2f} [{real['floor_fid_ci95'][0]:.2f}, {real['floor_fid_ci95'][1]:.2f}]); conditioning "
             f"judge: {real['judge']} ({real['judge_accuracy_on_real_test']:.1%} on real test images). Target: the "
             f"reference's final FID, {result['target_fid']:.2f}.", "",
             "| side | trained | images/s (set-up included) | final FID [95%] | final accuracy | time to the target "
             "| vs the reference | <= 1/3? |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    ref = result["reference"]
    rows = [("reference (diffusers example)", ref, None)] + [(f"synthaug: {n}", v, v) for n, v in result["variants"].items()]
    for label, side, variant in rows:
        last = side["snapshots"][-1]
        ratio = "" if variant is None or variant["ratio_to_reference"] is None else f"{variant['ratio_to_reference']:.2f}x"
        meets = "" if variant is None else ("yes" if variant["meets_target"] else "no")
        t = result["reference_time_to_target_s"] if variant is None else variant["time_to_target_s"]
        lines.append(f"| {label} | {last['time_s']:,.0f} s, {last['kimg']:,.1f} kimg | {side['train']['images_per_s']:,.1f} | "
                     f"{fid(last)} | {last['conditioning_accuracy']:.1%} | {secs(t)} | {ratio} | {meets} |")
    for label, side, _ in rows:
        lines += ["", f"## {label}", ""]
        settings = side.get("settings")
        if settings:
            lines += [f"Settings: `{' '.join(settings)}`", ""]
        lines += ["| wall time | kimg | FID [95%] | KID | conditioning accuracy |", "|---:|---:|---:|---:|---:|"]
        for r in side["snapshots"]:
            lines.append(f"| {r['time_s']:,.1f} s | {r['kimg']:,.1f} | {fid(r)} | {r['kid']:.4f} | {r['conditioning_accuracy']:.1%} |")
    return "\n".join(lines) + "\n"


def run(data: str, *, budget_s: float, every_s: float, fid_images: int, settings: list[str], variants: list[dict],
        reference_warmup_steps: int, device: str, work: Path, reference_from: Path | None = None,
        probe_images: int = 0) -> dict:
    """Train and judge the reference (or reuse one) and every synthaug variant; the result as written to JSON."""
    import torch

    from synthaug.data import load_dataset
    from synthaug.conditions import schema_from_dataset
    from synthaug.generator.sampling import training_scheduler
    from synthaug.recipe import recipe_to_dict

    choice = DATA[data]
    base, recipes = recipes_for(choice, settings, variants, work)
    t0 = time.perf_counter()
    dataset = load_dataset(base.data)  # decoded into the cache once, before either side's clock starts
    print(f"[{data}] {len(dataset.split('train'))} training images decoded in {time.perf_counter() - t0:.1f} s")
    schema = schema_from_dataset(dataset.split("train"), base.generator.condition)
    yardstick = Yardstick(dataset, choice.judge, fid_images, torch.device(device), probe_images)
    real = yardstick.describe()
    print(f"[{data}] real-vs-real FID floor at n = {yardstick.n}: {real['floor_fid']:.2f}; judge accuracy "
          f"{yardstick.judge_accuracy:.1%} on real test images")
    method = ReferenceMethod(warmup_steps=reference_warmup_steps, flip=base.generator.flip)
    key = evaluation_key(base, yardstick.n, method, data)

    if reference_from is not None:
        earlier = json.loads(Path(reference_from).read_text())
        if earlier.get("evaluation_key") != key:
            raise SystemExit(f"error: {reference_from} measured another reference (data, model, FID images, sampling or "
                             "method differ); run without --reference-from, or with the same settings.")
        reference = earlier["reference"]
        reference["reused_from"] = str(reference_from)
        print(f"[reference] reusing {reference_from} ({earlier['machine']}, {earlier['date']})")
    else:
        files = reference_files(dataset, work / "reference-files", native=False)
        snaps = Snapshots(work / "reference-snapshots", every_s, budget_s)
        train = train_reference(files, schema, base, method, snaps, device)
        print(f"[reference] trained {train['steps']} steps in {train['train_s']:.0f} s ({train['images_per_s']:.1f} images/s)")
        gen = side_generator(base.generator, schema, dict(training_scheduler(method.schedule, 1000, method.prediction).config),
                             base.sampling, device)
        reference = {"method": dataclasses.asdict(method), "recipe": recipe_to_dict(base),
                     "parameters": sum(p.numel() for p in gen.denoiser.parameters()), "train": train,
                     "snapshots": evaluate_snapshots("reference", snaps, gen, yardstick)}
    target = reference["snapshots"][-1]["fid"]
    ref_time = time_to_reach(reference["snapshots"], target)

    out = {}
    for v in variants:
        recipe = recipes[v["name"]]
        snaps = Snapshots(work / f"snapshots-{v['name']}", every_s, budget_s)
        train = train_synthaug(recipe, snaps)
        print(f"[{v['name']}] trained {train['steps']} of {train['planned_steps']} steps in {train['train_s']:.0f} s "
              f"({train['images_per_s']:.1f} images/s){', stopped at the budget' if train['stopped_at_budget'] else ''}")
        g = recipe.generator
        gen = side_generator(g, schema, dict(training_scheduler(g.schedule, g.num_timesteps, g.prediction).config),
                             recipe.sampling, device)
        params = sum(p.numel() for p in gen.denoiser.parameters())
        if params != reference["parameters"]:
            print(f"[{v['name']}] note: {params:,} parameters, the reference {reference['parameters']:,}")
        rows = evaluate_snapshots(v["name"], snaps, gen, yardstick)
        t = time_to_reach(rows, target)
        ratio = None if t is None or not ref_time else round(t / ref_time, 3)
        out[v["name"]] = {"settings": v["settings"], "recipe": recipe_to_dict(recipe), "parameters": params, "train": train,
                          "snapshots": rows, "time_to_target_s": t, "ratio_to_reference": ratio,
                          "meets_target": ratio is not None and ratio <= 1 / 3}
    return {"data": data, "device": device, "budget_s": budget_s, "every_s": every_s, "shared_settings": settings,
            "evaluation_key": key, "real": real, "target_fid": target, "reference_time_to_target_s": ref_time,
            "reference": reference, "variants": out}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=list(DATA), default="digits")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run of a couple of minutes")
    parser.add_argument("--budget-s", type=float, default=0, help="training wall time of the reference, and the most a "
                        "synthaug variant may train (it stops earlier when its recipe's duration is done)")
    parser.add_argument("--every-s", type=float, default=0, help="seconds of training between snapshots")
    parser.add_argument("--fid-images", type=int, default=0, help="images per side of each FID")
    parser.add_argument("--set", dest="settings", action=SetAction, default=[], metavar="KEY=VALUE",
                        help="a recipe override (data and model-size keys: both sides; others: synthaug only)")
    parser.add_argument("--variant", action=VariantAction, dest="variants", default=[], metavar="NAME",
                        help="a synthaug variant; the --set options after it are its own (default: one, 'recipe')")
    parser.add_argument("--reference-from", type=Path, default=None, help="reuse the reference of an earlier result file")
    parser.add_argument("--reference-warmup-steps", type=int, default=0, help="the reference's LR warm-up (default 500, "
                        "the diffusers example's; quick 10)")
    parser.add_argument("--probe-images", type=int, default=0, help="CUB: real training images the judge probe learns "
                        "from (default all; quick 300)")
    parser.add_argument("--device", default=None, help="default: cuda when there is one")
    parser.add_argument("--tag", default="", help="added to the result file's name")
    parser.add_argument("--out", type=Path, default=None, help="the JSON result (the markdown table goes beside it)")
    args = parser.parse_args(argv)
    args.variants = args.variants or [{"name": "recipe", "settings": []}]
    check_settings(args.settings, args.variants)
    return args


def main() -> None:
    args = parse_args()
    variants = args.variants
    if args.data == "cub32" and not (SHARED_DATA / "cub100").is_dir():
        raise SystemExit(f"error: the CUB subset is not at {SHARED_DATA / 'cub100'}; set SYNTHAUG_SHARED_DATA.")
    import torch

    from synthaug.errors import SynthaugError

    choice = DATA[args.data]
    quick = QUICK[args.data] if args.quick else {}
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="synthaug-bench-ttq-") as work:
        try:
            result = run(args.data, budget_s=args.budget_s or quick.get("budget_s", choice.budget_s),
                         every_s=args.every_s or quick.get("every_s", choice.every_s),
                         fid_images=args.fid_images or quick.get("fid_images", choice.fid_images),
                         settings=args.settings, variants=variants,
                         reference_warmup_steps=args.reference_warmup_steps or (QUICK_REFERENCE_WARMUP_STEPS if args.quick else 500),
                         device=device, work=Path(work), reference_from=args.reference_from,
                         probe_images=args.probe_images or (QUICK_PROBE_IMAGES if args.quick else 0))
        except SynthaugError as e:
            raise SystemExit(f"error: {e}") from None
    name = f"time_to_quality_{args.data}" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    path = write_result(name, result, args.out or RESULTS / f"{name}.json")
    written = json.loads(path.read_text())
    path.with_suffix(".md").write_text(markdown(written))
    print(f"wrote {path.with_suffix('.md')}")
    for v, r in result["variants"].items():
        t = r["time_to_target_s"]
        print(f"{v}: reaches the reference's final FID {result['target_fid']:.2f} "
              + ("never" if t is None else f"at {t:.0f} s vs the reference's {result['reference_time_to_target_s']:.0f} s "
                 f"({r['ratio_to_reference']:.2f}x; target <= 0.33x: {'yes' if r['meets_target'] else 'no'})"))
    print(machine())


if __name__ == "__main__":
    main()
