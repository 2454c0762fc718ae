"""The quality bar of the embedded default, measured end to end (slow: trains the real digits recipe)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.svm import SVC

from synthaug import load_dataset
from synthaug.generator.generate import GenerateRequest, generate_shards
from synthaug.generator.train import train_generator
from synthaug.recipe import load_recipe
from synthaug.shards import read_shard


@pytest.mark.slow
def test_digits_recipe_draws_the_requested_digit_95_percent_of_the_time(tmp_path):
    run = train_generator(load_recipe("digits", [f"run_dir={tmp_path / 'run'}"]))
    manifest = generate_shards(run.path, GenerateRequest(all_classes=True, per_class=50), tmp_path / "s")
    images, labels = [], []
    for shard in manifest["shards"]:
        for s in read_shard(tmp_path / "s" / shard["name"]):
            images.append(np.asarray(Image.open(io.BytesIO(s["png"]))).reshape(-1))
            labels.append(int(s["cls"]))
    train = load_dataset("digits").split("train")
    clf = SVC(gamma="scale").fit(train.images.reshape(len(train), -1) / 255.0, train.labels)
    accuracy = float((clf.predict(np.stack(images) / 255.0) == np.array(labels)).mean())
    assert len(labels) == 500
    assert accuracy >= 0.95, f"conditioning accuracy {accuracy:.3f}"
