"""Sampling: ``synthaug generate`` vs a 1000-step DDPM loop with two forwards per step, same model, and the
like-for-like row in between.

Rows, all from the same trained EMA weights, the same images per digit and the same guidance:

1. ``synthaug generate``: ``generate_shards`` as ``synthaug generate --all-classes --per-class N`` runs it
   (DPM-Solver++ 2M, 20 steps, the conditional and null branches in one batched forward; PNG encoding
   and shard writing included).
2. the same sampler, steps, seeds and network batch, sampling alone (``Generator.sample_conditions``):
   the batched guidance forward.
3. like for like: the same sampler, steps, seeds and network batch, but the conditional and the null
   branch as two separate forwards per step. Rows 2 and 3 differ only in how the guidance forward is
   batched, so their ratio is what batching it adds (their images are the same, to the bit where the
   backend's kernels allow).
4. the stock diffusers way: ``DDPMScheduler`` over all 1000 training steps, one forward for the
   condition and one for the null class per step, the same batch size.

Rows 2 and 3 are timed ``--repeats`` times, interleaved; medians with min-max. Network evaluations are
counted by a forward hook (rows through the U-Net per image). Quality of each set: conditioning
accuracy (an RBF SVM trained on the real digits) and FID/KID against the real test digits with 95%
jackknife intervals (``synthaug.fid.fid_kid`` on the Inception features of
``synthaug.quality.features``), next to the real-vs-real floor at the same n.

Usage: python benchmarks/bench_sampling.py [--quick] [--run runs/digits]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import DigitsYardstick, private_cache, spread, trained_digits_run, write_result


class RowCounter:
    """Counts the rows (images x branches) that go through a module's forward."""

    def __init__(self, module):
        self.rows = 0
        module.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        self.rows += len(args[0])


def two_forward_sample(gen, conditions, seeds: list[int], sampling) -> np.ndarray:
    """``gen.sample_conditions`` with the guidance branches as two forwards per step instead of one batched one:
    the same sampler, steps, per-image seeds, network batch (padding included) and scheduler steps as
    ``synthaug.generator.sampling.sample_images``, which this follows line by line."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from synthaug.generator.sampling import make_sampler, run_network, set_steps

    denoiser, device = gen.denoiser, gen.device
    null = gen.schema.null(1).to(device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(seeds), sampling.batch_size):
            chunk = conditions[start : start + sampling.batch_size]
            chunk_seeds = seeds[start : start + sampling.batch_size]
            cond = torch.tensor([c.value for c in chunk], dtype=torch.long)
            cond = (cond[:, 0] if gen.schema.kind == "class" else cond).to(device)
            null_rows = null.expand(len(chunk), *null.shape[1:])
            generators = [torch.Generator(device=device).manual_seed(int(s)) for s in chunk_seeds]
            scheduler = make_sampler(sampling.sampler, gen.scheduler_config)
            set_steps(scheduler, sampling.steps, device)
            step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
            x = randn_tensor((len(chunk), *denoiser.sample_shape), generator=generators, device=device,
                             dtype=torch.float32) * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(x, t)
                ts = t.reshape(1).to(device)
                with torch.autocast(device.type, dtype=gen.autocast_dtype, enabled=gen.autocast_dtype is not None):
                    cond_out = run_network(denoiser, model_in, ts, cond, null, sampling.network_batch)
                    null_out = run_network(denoiser, model_in, ts, null_rows, null, sampling.network_batch)
                x = scheduler.step(null_out + sampling.guidance * (cond_out - null_out), t, x, **step_kwargs).prev_sample
            x = denoiser.decode(x, sampling.network_batch)
            out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def reference_sample(gen, labels: np.ndarray, guidance: float, batch: int, seed: int = 0) -> np.ndarray:
    """The stock loop: DDPMScheduler over all training steps, conditional and null forwards apart."""
    import torch
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(gen.scheduler_config)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    generator = torch.Generator().manual_seed(seed)
    unet = gen.denoiser.unet
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    out = []
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            cond = torch.as_tensor(labels[start : start + batch])
            null = gen.schema.null(len(cond))
            x = torch.randn((len(cond), *shape), generator=generator)
            for t in scheduler.timesteps:
                ts = t.expand(len(cond))
                eps_cond = gen.denoiser(x, ts, cond)
                eps_null = gen.denoiser(x, ts, null)
                eps = eps_null + guidance * (eps_cond - eps_null)
                x = scheduler.step(eps, t, x, generator=generator).prev_sample
            out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def shard_images(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    from synthaug.shards import read_manifest, read_shard

    images, labels = [], []
    for shard in read_manifest(folder)["shards"]:
        for s in read_shard(folder / shard["name"]):
            images.append(np.asarray(Image.open(io.BytesIO(s["png"])))[..., None])
            labels.append(int(s["cls"]))
    return np.stack(images), np.array(labels)


def describe(row: dict) -> str:
    return (f"{row['images']} images in {row['seconds']:.1f} s ({row['images_per_s']:.1f}/s), "
            f"{row['network_evaluations_per_image']:.0f} evaluations/image, accuracy {row['conditioning_accuracy']:.1%}, "
            f"FID {row['fid']:.2f} [{row['fid_ci95'][0]:.2f}, {row['fid_ci95'][1]:.2f}]")


def batched_vs_two_forwards(gen, conditions, seeds, sampling, repeats: int) -> dict:
    """Rows 2 and 3: the same sampling with the guidance forward batched, and as two forwards, timed ``repeats``
    times each, interleaved. Returns per kind its images, seconds of each run and network rows per run."""
    counter = RowCounter(gen.denoiser)
    draws = {"batched": gen.sample_conditions, "two_forwards": functools.partial(two_forward_sample, gen)}
    gen.sample_conditions(conditions[:8], seeds[:8], sampling)  # warm-up, not timed
    out = {kind: {"seconds": []} for kind in draws}
    for _ in range(repeats):
        for kind, draw in draws.items():
            counter.rows = 0
            start = time.perf_counter()
            out[kind]["images"] = draw(conditions, seeds, sampling)
            out[kind]["seconds"].append(time.perf_counter() - start)
            out[kind]["rows"] = counter.rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 images per digit and a 30-kimg generator")
    parser.add_argument("--per-class", type=int, default=0, help="images per digit (default 30, quick 10)")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs of rows 2 and 3, interleaved (default 5, quick 3)")
    parser.add_argument("--run", type=Path, default=None, help="a trained digits run to reuse")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    private_cache()
    from synthaug.generator import Generator
    from synthaug.generator.pipeline import plan_conditions
    from synthaug.synthesis import GenerateRequest, generate_shards

    per_class = args.per_class or (10 if args.quick else 30)
    repeats = args.repeats or (3 if args.quick else 5)
    work = Path(tempfile.mkdtemp(prefix="synthaug-bench-sampling-"))
    run = args.run or trained_digits_run(work / "run", kimg=30 if args.quick else 0)
    gen = Generator.load(run, device="cpu")
    s = gen.sampling
    yardstick = DigitsYardstick(fid_images=per_class * 10)

    # 1. synthaug generate (shards)
    counter = RowCounter(gen.denoiser)
    start = time.perf_counter()
    generate_shards(gen, GenerateRequest(all_classes=True, per_class=per_class), work / "shards")
    ours_s = time.perf_counter() - start
    images, labels = shard_images(work / "shards")
    n = len(labels)
    base = {"sampler": s.sampler, "steps": s.steps, "guidance": s.guidance, "network_batch": s.network_batch, "images": n}
    ours = {**base, "seconds": round(ours_s, 2), "images_per_s": round(n / ours_s, 2),
            "network_evaluations_per_image": round(counter.rows / n, 1),
            "network_calls_per_step": "1 (conditional and null rows batched)", **yardstick(images, labels)}
    print(f"synthaug generate        {describe(ours)}")

    # 2. and 3. the same sampling, guidance forward batched vs two forwards (the like-for-like row)
    plan = plan_conditions(gen.all_classes(), [per_class] * gen.schema.num_classes, base_seed=s.seed)
    conditions, seeds = [c for c, _, _ in plan], [seed for _, _, seed in plan]
    plan_labels = np.array([c.label for c in conditions])
    measured = batched_vs_two_forwards(gen, conditions, seeds, s, repeats)
    rows = {}
    for kind, calls in (("batched", "1 (conditional and null rows batched)"), ("two_forwards", "2 (conditional, then null)")):
        m = measured[kind]
        med = spread(m["seconds"])["median"]
        rows[kind] = {**base, "seconds": med, "seconds_spread": spread(m["seconds"]), "images_per_s": round(n / med, 2),
                      "network_evaluations_per_image": round(m["rows"] / n, 1), "network_calls_per_step": calls}
    identical = bool(np.array_equal(measured["batched"]["images"], measured["two_forwards"]["images"]))
    rows["batched"].update(yardstick(measured["batched"]["images"], plan_labels))
    if identical:  # the same images: the same quality, measured once
        rows["two_forwards"].update({k: v for k, v in rows["batched"].items() if k not in rows["two_forwards"]})
    else:
        rows["two_forwards"].update(yardstick(measured["two_forwards"]["images"], plan_labels))
    rows["two_forwards"]["images_identical_to_batched"] = identical
    print(f"same sampler, batched    {describe(rows['batched'])}")
    print(f"same sampler, 2 forwards {describe(rows['two_forwards'])} (images identical: {identical})")

    # 4. the stock diffusers loop
    counter.rows = 0
    start = time.perf_counter()
    ref_images = reference_sample(gen, labels, s.guidance, s.batch_size)
    ref_s = time.perf_counter() - start
    ref = {"sampler": "ddpm", "steps": 1000, "guidance": s.guidance, "network_batch": s.batch_size, "images": n,
           "seconds": round(ref_s, 2), "images_per_s": round(n / ref_s, 2),
           "network_evaluations_per_image": round(counter.rows / n, 1),
           "network_calls_per_step": "2 (conditional, then null)", **yardstick(ref_images, labels)}
    print(f"reference (DDPM 1000)    {describe(ref)}")

    result = {
        "run": str(run), "images": n, "repeats": repeats, "judge_accuracy_on_real_test": round(yardstick.judge_accuracy, 4),
        "synthaug": ours, "same_sampler_batched": rows["batched"], "same_sampler_two_forwards": rows["two_forwards"],
        "reference": ref,
        "speedup": round(ref_s / ours_s, 1),
        "batched_guidance_speedup": round(rows["two_forwards"]["seconds"] / rows["batched"]["seconds"], 3),
        "fewer_network_evaluations": round(ref["network_evaluations_per_image"] / ours["network_evaluations_per_image"], 1),
        "accuracy_difference_points": round(100 * (ours["conditioning_accuracy"] - ref["conditioning_accuracy"]), 2),
        "fid_ratio": round(ours["fid"] / ref["fid"], 3),
    }
    write_result("sampling" + ("_quick" if args.quick else ""), result, args.out)


if __name__ == "__main__":
    main()
