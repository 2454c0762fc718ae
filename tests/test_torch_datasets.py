"""The Python API for other pipelines: shard streams over workers and DDP ranks, mixing, on-the-fly
sampling, label-space checks, a set that generate is still writing, and the README's three examples run as
written."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import synthaug
from synthaug import SynthaugError
from synthaug.files import exclusive_lock
from synthaug.generator import Generator
from synthaug.shards import load_shard_set, read_manifest, read_shard

README = Path(__file__).resolve().parents[1] / "README.md"


def digest(image: torch.Tensor) -> str:
    return hashlib.sha256(image.numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def shard_folder(digits_run, tmp_path_factory):
    """16 synthetic digits (classes 0-3, 4 each) in 4 shards of 4."""
    out = tmp_path_factory.mktemp("shards") / "s"
    synthaug.write_shards(Generator.load(digits_run.path, device="cpu"), out, ["0", "1", "2", "3"], per_class=4,
                          images_per_shard=4, steps=2)
    return out


def all_images(folder) -> Counter:
    syn = load_shard_set(folder)
    return Counter(digest(torch.from_numpy(im).permute(2, 0, 1).float().div(255)) for im in syn.images)


def test_two_workers_over_four_shards_see_every_sample_once_per_epoch(shard_folder):
    ds = synthaug.synthetic_dataset(shard_folder, shuffle=8, seed=1)
    expected = all_images(shard_folder)
    assert len(expected) == 16
    for epoch in range(2):
        ds.set_epoch(epoch)
        seen = Counter(digest(im) for images, _ in DataLoader(ds, batch_size=3, num_workers=2) for im in images)
        assert seen == expected  # every image exactly once


def test_simulated_ddp_ranks_see_disjoint_samples(shard_folder, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        ds = synthaug.synthetic_dataset(shard_folder, shuffle=4, seed=3)
        seen.append(Counter(digest(im) for images, _ in DataLoader(ds, batch_size=4, num_workers=2) for im in images))
    assert sum(seen[0].values()) == sum(seen[1].values()) == 8
    assert not set(seen[0]) & set(seen[1]) and seen[0] + seen[1] == all_images(shard_folder)


def test_resampled_epochs_are_equal_on_every_rank(shard_folder, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        ds = synthaug.synthetic_dataset(shard_folder, resampled=True, epoch_size=10, shuffle=0)
        assert sum(len(labels) for _, labels in DataLoader(ds, batch_size=4, num_workers=2)) == 10


def test_labels_map_onto_the_real_label_space(shard_folder):
    ds = synthaug.synthetic_dataset(shard_folder, shuffle=0, real_classes=["9", "3", "2", "1", "0"])
    labels = Counter(int(label) for _, label in ds)
    assert labels == {4: 4, 3: 4, 2: 4, 1: 4}  # "0" is index 4 of this real label space
    with pytest.raises(SynthaugError, match=r"classes '2', '3' are not classes of the real dataset"):
        synthaug.synthetic_dataset(shard_folder, real_classes=["0", "1"])


def test_mix_by_ratio_is_per_class_exact_and_deterministic(shard_folder):
    real = synthaug.load_dataset("digits", shots_per_class=8).split("train")
    real = real.subset(real.labels < 4)  # digits 0-3, as in the synthetic set; the label space keeps all 10
    mixed = synthaug.mix(real, shard_folder, ratio=0.5, seed=0)
    assert len(mixed) == 32 + 16 and int(mixed.is_synthetic.sum()) == 16
    assert np.bincount(mixed.labels[mixed.is_synthetic], minlength=4)[:4].tolist() == [4, 4, 4, 4]
    again = synthaug.mix(real, shard_folder, ratio=0.25, seed=0)
    other = synthaug.mix(real, shard_folder, ratio=0.25, seed=1)
    same = synthaug.mix(real, shard_folder, ratio=0.25, seed=0)
    pick = lambda m: [digest(m[i][0]) for i in np.flatnonzero(m.is_synthetic)]  # noqa: E731
    assert pick(again) == pick(same) and pick(again) != pick(other)
    with pytest.raises(SynthaugError, match="has 4 images of '0' but ratio 1.5 needs 12"):
        synthaug.mix(real, shard_folder, ratio=1.5)
    image, label = mixed[len(mixed) - 1]
    assert image.dtype == torch.float32 and image.shape == (1, 8, 8) and 0 <= image.min() and image.max() <= 1


def test_mix_by_probability_holds_in_batches(shard_folder):
    """Each image a shuffled DataLoader yields is synthetic with probability p, so the synthetic images per
    batch of 64 follow Binomial(64, p) (a hypergeometric draw, which is narrower): check the mean count over
    all batches and every batch's count against 99.9% bounds."""
    from scipy.stats import binom

    real = synthaug.load_dataset("digits").split("train")
    p, batch, epochs = 0.3, 64, 8
    mixed = synthaug.mix(real, shard_folder, probability=p, seed=0)
    assert abs(mixed.is_synthetic.mean() - p) < 1 / len(real)
    synthetic = set(all_images(shard_folder))  # told apart from the real digits by their pixels
    assert not synthetic & {digest(image) for image, _ in (mixed[i] for i in np.flatnonzero(~mixed.is_synthetic))}
    loader = DataLoader(mixed, batch_size=batch, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))
    counts = np.array([sum(digest(im) in synthetic for im in images) for _ in range(epochs) for images, _ in loader])
    n = len(counts)
    assert n == epochs * (len(mixed) // batch)
    # the mean of n batch counts: mean b*p, std sqrt(b*p*(1-p)/n); 3.29 std is the two-sided 99.9% bound
    assert abs(counts.mean() - batch * p) < 3.29 * np.sqrt(batch * p * (1 - p) / n)
    # each batch, with the 0.1% split over all n batches (Bonferroni): a loader that served the real images
    # first and the synthetic ones last (0 or 64 per batch) fails here even when the mean holds
    low, high = binom.ppf(0.0005 / n, batch, p), binom.isf(0.0005 / n, batch, p)
    assert low <= counts.min() and counts.max() <= high, (counts.min(), counts.max(), low, high)
    assert counts.std() > 0.5 * np.sqrt(batch * p * (1 - p))  # and they do vary, as draws at random would


def test_mix_refuses_another_label_space(shard_folder, cub_tree):
    real = synthaug.load_dataset(f"cub:{cub_tree}", resolution=8).split("train")
    with pytest.raises(SynthaugError, match="classes '0', '1', '2' and 1 more are not classes of cub-CUB_200_2011"):
        synthaug.mix(real, shard_folder, ratio=1.0)


def test_on_the_fly_draws_fresh_images_into_a_bounded_cache(digits_run, monkeypatch):
    gen = Generator.load(digits_run.path, device="cpu")
    calls = []
    original = gen.sample_conditions
    monkeypatch.setattr(gen, "sample_conditions", lambda c, s, cfg: calls.append(len(s)) or original(c, s, cfg))
    stream = synthaug.on_the_fly(gen, classes=["3", "5"], samples_per_epoch=40, cache_size=12, batch_size=8, reuse=2.0, seed=0)
    items = list(stream)
    assert len(items) == 40 == len(stream)
    assert {label for _, label in items} == {3, 5}
    assert calls == [8] * 3  # 40 yields at 2 per image drawn -> 3 batches of 8 (24 >= 20 images)
    first = [digest(im) for im, _ in items]
    assert first == [digest(im) for im, _ in synthaug.on_the_fly(gen, classes=["3", "5"], samples_per_epoch=40, cache_size=12,
                                                                   batch_size=8, reuse=2.0, seed=0)]


def readme_examples() -> list[str]:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_has_three_examples():
    assert len(readme_examples()) == 3


@pytest.fixture(scope="module")
def readme_folder(digits_run, tmp_path_factory):
    """A folder as the README's examples expect it (``runs/digits``), after example 1 ran there once (example 2
    reads the shards it writes): its output, for the test of example 1."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "runs").mkdir()
    shutil.copytree(digits_run.path, folder / "runs" / "digits")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(readme_examples()[0], "README example 1", "exec"), {})
    return folder, out.getvalue()


@pytest.mark.parametrize("number", [0, 1, 2])
def test_readme_example_runs_as_written(number, readme_folder, monkeypatch, capsys):
    folder, first = readme_folder
    monkeypatch.chdir(folder)
    if number == 0:
        out = first
    else:
        exec(compile(readme_examples()[number], f"README example {number + 1}", "exec"), {})
        out = capsys.readouterr().out
    assert {0: "2157 images, 719 synthetic", 1: "epoch 1: 1000 synthetic images",
            2: "torch.Size([256, 1, 8, 8])"}[number] in out, out
    if number == 2:
        counts = eval(out.strip().splitlines()[-1].split("]) ", 1)[1])
        assert sum(counts) == 256 and set(np.flatnonzero(counts)) == {3, 5, 8}
    assert os.getcwd() == str(folder)


def test_a_damaged_shard_is_refused_before_streaming(shard_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shard_folder, copy)
    path = copy / "synth-000002.tar"
    path.write_bytes(path.read_bytes()[:-512])
    with pytest.raises(SynthaugError, match="synth-000002.tar is missing or damaged"):
        synthaug.synthetic_dataset(copy)


# -- a set that generate is still writing --------------------------------------------------------------

def digests(images) -> Counter:
    return Counter(np.asarray(im).tobytes() for im in images)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_a_dataloader_with_4_workers_reads_only_complete_shards_while_generate_writes(shard_set):
    expected = digests((load_shard_set(shard_set).images.astype(np.float32) / 255).transpose(0, 3, 1, 2))
    # generate at work: the next shard half written under its partial name, and one finished but not yet listed
    shard = (shard_set / "synth-000000.tar").read_bytes()
    (shard_set / ".synth-000005.tar.partial").write_bytes(shard[: len(shard) // 2])
    shutil.copy(shard_set / "synth-000001.tar", shard_set / "synth-000004.tar")
    loader = DataLoader(synthaug.synthetic_dataset(shard_set, shuffle=0), batch_size=3, num_workers=4)
    assert digests(im.numpy() for images, _ in loader for im in images) == expected
    # bare shard paths carry no manifest: a partial one is refused rather than read as if complete
    with pytest.raises(SynthaugError, match=r"synth-000005\.tar\.partial is a partial shard .* pass the shard folder"):
        synthaug.synthetic_dataset(sorted(str(p) for p in shard_set.glob("*synth-*")))
    with pytest.raises(SynthaugError, match=r"synth-000007\.tar does not exist"):
        synthaug.synthetic_dataset([str(shard_set / "synth-000007.tar")])
    listed = [str(shard_set / s["name"]) for s in read_manifest(shard_set)["shards"]]
    loader = DataLoader(synthaug.synthetic_dataset(listed, shuffle=0), batch_size=3, num_workers=4)
    assert digests(im.numpy() for images, _ in loader for im in images) == expected


def test_a_set_that_generate_is_still_writing_is_refused_until_it_is_finished(shard_set):
    (shard_set / "manifest.json").unlink()  # as before generate's last step
    with exclusive_lock(shard_set / ".lock", "the folder"):
        with pytest.raises(SynthaugError, match="synthaug generate is still writing .*; wait for it to finish"):
            synthaug.synthetic_dataset(shard_set)
    with pytest.raises(SynthaugError, match="was interrupted or its manifest was deleted; run the same synthaug generate"):
        synthaug.synthetic_dataset(shard_set)
    assert [s["__key__"] for s in read_shard(shard_set / "synth-000000.tar")]  # nothing was touched
