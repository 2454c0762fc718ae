"""The embedded default's quality bar: train recipes/digits.toml, generate with its default sampler
settings, and measure how often a classifier trained on the real digits recognises the requested digit.

Usage: python benchmarks/bench_digits_quality.py [--per-class 100] [--out benchmarks/results/digits_quality.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import DigitsYardstick, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "digits_quality.json")
    args = parser.parse_args()
    os.environ.setdefault("SYNTHAUG_CACHE", tempfile.mkdtemp(prefix="synthaug-cache-"))
    from synthaug.synthesis import GenerateRequest, generate_shards
    from synthaug.generator.train import train_generator
    from synthaug.recipe import load_recipe
    from synthaug.shards import read_shard

    work = Path(tempfile.mkdtemp(prefix="synthaug-digits-"))
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "digits.toml", [f"run_dir={work / 'run'}"])
    t0 = time.perf_counter()
    run = train_generator(recipe, fresh=True)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    manifest = generate_shards(run.path, GenerateRequest(all_classes=True, per_class=args.per_class), work / "shards")
    generate_s = time.perf_counter() - t0

    from PIL import Image
    import io

    images, labels = [], []
    for shard in manifest["shards"]:
        for s in read_shard(work / "shards" / shard["name"]):
            images.append(np.asarray(Image.open(io.BytesIO(s["png"]))))
            labels.append(int(s["cls"]))
    images, labels = np.stack(images), np.array(labels)
    yardstick = DigitsYardstick(fid_images=0)  # only its judge: an RBF SVM on the real training digits
    pred, real_acc = yardstick.judge.predict(yardstick.flat(images)), yardstick.judge_accuracy
    per_class = {str(c): float((pred[labels == c] == c).mean()) for c in range(10)}
    result = {
        "machine": machine(),
        "recipe": "recipes/digits.toml",
        "train_seconds": round(train_s, 1),
        "generate_seconds": round(generate_s, 1),
        "images": len(labels),
        "sampler": manifest["settings"]["sampler"],
        "steps": manifest["settings"]["steps"],
        "guidance": manifest["settings"]["guidance"],
        "classifier": "sklearn SVC (RBF) on the real digits training split",
        "classifier_real_test_accuracy": round(real_acc, 4),
        "conditioning_accuracy": round(float((pred == labels).mean()), 4),
        "per_class_accuracy": per_class,
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
