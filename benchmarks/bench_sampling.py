"""Sampling: ``synthaug generate`` vs a 1000-step DDPM loop with two forwards per step, same model.

synthaug's side is ``generate_shards`` as ``synthaug generate --all-classes --per-class N`` runs it
(DPM-Solver++ 2M, 20 steps, guidance 2 with the conditional and null branches in one batched
forward, PNG encoding and shard writing included). The reference is the stock diffusers way of
sampling a class-conditional model with classifier-free guidance: ``DDPMScheduler`` with all 1000
training steps, one forward for the condition and one for the null class per step, the same batch
size and guidance. Both draw the same number of images per digit from the same trained EMA weights.

Network evaluations are counted by a forward hook (rows through the U-Net per image). Quality of
both sets: conditioning accuracy (an SVM trained on the real digits) and FID/KID against the real
test digits, each next to the real-vs-real floor at the same n.

Usage: python benchmarks/bench_sampling.py [--quick] [--run runs/digits]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import DigitsYardstick, private_cache, trained_digits_run, write_result


class RowCounter:
    """Counts the rows (images x branches) that go through a module's forward."""

    def __init__(self, module):
        self.rows = 0
        module.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        self.rows += len(args[0])


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 images per digit and a 30-kimg generator")
    parser.add_argument("--per-class", type=int, default=0, help="images per digit (default 30, quick 10)")
    parser.add_argument("--run", type=Path, default=None, help="a trained digits run to reuse")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    private_cache()
    from synthaug.generator import Generator
    from synthaug.synthesis import GenerateRequest, generate_shards

    per_class = args.per_class or (10 if args.quick else 30)
    work = Path(tempfile.mkdtemp(prefix="synthaug-bench-sampling-"))
    run = args.run or trained_digits_run(work / "run", kimg=30 if args.quick else 0)
    gen = Generator.load(run, device="cpu")
    s = gen.sampling
    yardstick = DigitsYardstick(fid_images=per_class * 10)

    counter = RowCounter(gen.denoiser)
    start = time.perf_counter()
    generate_shards(gen, GenerateRequest(all_classes=True, per_class=per_class), work / "shards")
    ours_s = time.perf_counter() - start
    ours_rows = counter.rows
    images, labels = shard_images(work / "shards")
    n = len(labels)
    ours = {"sampler": s.sampler, "steps": s.steps, "guidance": s.guidance, "seconds": round(ours_s, 2),
            "images_per_s": round(n / ours_s, 2), "network_evaluations_per_image": round(ours_rows / n, 1),
            "network_calls_per_step": "1 (conditional and null rows batched)", **yardstick(images, labels)}
    print(f"synthaug  {n} images in {ours_s:.1f} s, {ours_rows / n:.0f} evaluations/image, "
          f"accuracy {ours['conditioning_accuracy']:.1%}, FID {ours['fid']:.2f}")

    counter.rows = 0
    start = time.perf_counter()
    ref_images = reference_sample(gen, labels, s.guidance, s.batch_size)
    ref_s = time.perf_counter() - start
    ref = {"sampler": "ddpm", "steps": 1000, "guidance": s.guidance, "seconds": round(ref_s, 2),
           "images_per_s": round(n / ref_s, 2), "network_evaluations_per_image": round(counter.rows / n, 1),
           "network_calls_per_step": "2 (conditional, then null)", **yardstick(ref_images, labels)}
    print(f"reference {n} images in {ref_s:.1f} s, {counter.rows / n:.0f} evaluations/image, "
          f"accuracy {ref['conditioning_accuracy']:.1%}, FID {ref['fid']:.2f}")

    result = {
        "run": str(run), "images": n, "judge_accuracy_on_real_test": round(yardstick.judge_accuracy, 4),
        "synthaug": ours, "reference": ref,
        "speedup": round(ref_s / ours_s, 1),
        "fewer_network_evaluations": round(ref["network_evaluations_per_image"] / ours["network_evaluations_per_image"], 1),
        "accuracy_difference_points": round(100 * (ours["conditioning_accuracy"] - ref["conditioning_accuracy"]), 2),
        "fid_ratio": round(ours["fid"] / ref["fid"], 3),
    }
    write_result("sampling" + ("_quick" if args.quick else ""), result, args.out)


if __name__ == "__main__":
    main()
