"""Quality vs cost: conditioning accuracy and FID/KID against the number of steps, for every sampler.

One trained digits generator; for each sampler (DDPM, DDIM, DPM-Solver++ 2M, UniPC, Euler) and each
step count, the same images (same per-image seeds, guidance 2) are drawn and judged: conditioning
accuracy by an SVM trained on the real digits, FID/KID against the real test digits next to the
real-vs-real floor at the same n. Seconds are sampling only (no PNG or shard writing).

Usage: python benchmarks/bench_steps.py [--quick] [--run runs/digits]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import DigitsYardstick, private_cache, trained_digits_run, write_result

SAMPLERS = ("ddpm", "ddim", "dpm++2m", "unipc", "euler")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 and 20 steps, 5 images per digit, a 30-kimg generator")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="default 5 10 20 50")
    parser.add_argument("--per-class", type=int, default=0, help="images per digit (default 30, quick 5)")
    parser.add_argument("--run", type=Path, default=None, help="a trained digits run to reuse")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    private_cache()
    from synthaug.generator import Generator
    from synthaug.generator.pipeline import plan_conditions

    steps_list = args.steps or ([5, 20] if args.quick else [5, 10, 20, 50])
    per_class = args.per_class or (5 if args.quick else 30)
    run = args.run or trained_digits_run(Path(tempfile.mkdtemp(prefix="synthaug-bench-steps-")) / "run",
                                         kimg=30 if args.quick else 0)
    gen = Generator.load(run, device="cpu")
    plan = plan_conditions(gen.all_classes(), [per_class] * gen.schema.num_classes, base_seed=0)
    conditions, seeds = [c for c, _, _ in plan], [s for _, _, s in plan]
    labels = np.array([c.label for c in conditions])
    yardstick = DigitsYardstick(fid_images=len(plan))
    gen.sample_conditions(conditions[:8], seeds[:8], gen.sampling)  # warm-up, not timed
    rows = []
    for sampler in SAMPLERS:
        for steps in steps_list:
            sampling = dataclasses.replace(gen.sampling, sampler=sampler, steps=steps)
            start = time.perf_counter()
            images = gen.sample_conditions(conditions, seeds, sampling)
            seconds = time.perf_counter() - start
            row = {"sampler": sampler, "steps": steps, "guidance": sampling.guidance, "images": len(seeds),
                   "seconds": round(seconds, 2), "images_per_s": round(len(seeds) / seconds, 1), **yardstick(images, labels)}
            rows.append(row)
            print(f"{sampler:8s} {steps:3d} steps: accuracy {row['conditioning_accuracy']:.1%}  FID {row['fid']:7.2f}  "
                  f"KID {row['kid']:.4f}  ({row['images_per_s']:.0f} images/s)")
    write_result("steps" + ("_quick" if args.quick else ""),
                 {"run": str(run), "judge_accuracy_on_real_test": round(yardstick.judge_accuracy, 4), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
