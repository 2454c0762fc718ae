"""Text-conditioned backends (sd-lora, text-unet) with tiny random components made here: prompts, recipe
checks, train -> save -> load -> generate shards end to end, exact resume, the errors, and a benchmark."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, cli, tiny_recipe
from synthaug import SynthaugError
from synthaug.generator import Generator
from synthaug.conditions import ConditionSchema
from synthaug.synthesis import write_shards
from synthaug.generator.text import Prompts, folder_sha256
from synthaug.generator.train import train_generator
from synthaug.recipe import load_recipe

pytest.importorskip("transformers")
pytest.importorskip("peft")

TEMPLATE = "a photo of a {class}, a digit"
TWO_STEPS = ["generator.batch_size=8", "generator.duration_kimg=0.016", "generator.log_every_kimg=0.008",
             "generator.snapshot_every_kimg=0.016", "generator.warmup_kimg=0"]


def make_tokenizer(folder):
    """A character-level CLIP tokenizer (no merges) written locally: no download, no sentencepiece."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789,.":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=24).save_pretrained(folder)
    return len(vocab)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny random Stable Diffusion folder (diffusers layout) and a tiny T5 encoder folder."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("parts")
    sd = root / "sd"
    vocab = make_tokenizer(sd / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                 num_hidden_layers=2, max_position_embeddings=24, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(sd / "text_encoder")
    UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                         cross_attention_dim=32, norm_num_groups=8, attention_head_dim=2).save_pretrained(sd / "unet")
    AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  sample_size=8).save_pretrained(sd / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(sd / "scheduler")
    t5 = root / "t5"
    make_tokenizer(t5)
    T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_ff=37, num_layers=2, num_heads=4, d_kv=8)).save_pretrained(t5)
    return {"sd": sd, "t5": t5}


def sd_sets(parts, run_dir):
    return [*TINY, *TWO_STEPS, "data.shots_per_class=3", "generator.backend=sd-lora", f"generator.base_model={parts['sd']}",
            f"generator.prompt_template={TEMPLATE}", f"run_dir={run_dir}"]


def text_unet_sets(parts, run_dir):
    return [*TINY, *TWO_STEPS, "data.shots_per_class=3", "generator.backend=text-unet", f"generator.text_encoder={parts['t5']}",
            f"generator.prompt_template={TEMPLATE}", f"run_dir={run_dir}"]


def as_cli(sets):
    return [arg for item in sets for arg in ("--set", item)]


def read_samples(folder):
    import webdataset as wds

    urls = sorted(str(p) for p in folder.glob("synth-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))


def test_prompts_from_class_names_and_attribute_levels():
    s = ConditionSchema("class", ("Anna's Hummingbird", "wren"), (5, 9), resolution=8, channels=3)
    p = Prompts(s, "a photo of a {class}, a bird")
    assert p.text((0,)) == "a photo of a Anna's Hummingbird, a bird" and p.text((2,)) == ""  # null: the empty prompt
    assert p.describe()["prompts"] == ["a photo of a Anna's Hummingbird, a bird", "a photo of a wren, a bird"]
    faces = ConditionSchema("attributes", ("face",), (0,), resolution=8, channels=3,
                            attribute_names=("Bangs", "Smiling"), attribute_levels=(6, 6))
    p = Prompts(faces, "")
    assert p.text((0, 5)) == "a face with no bangs, very strong smiling"
    assert p.text((6, 3)) == "a face with noticeable smiling" and p.text((6, 6)) == ""


@pytest.mark.parametrize("sets, message", [
    (["generator.backend=dalle"], "generator.backend 'dalle' is not known; use one of unet, text-unet, sd-lora."),
    (["generator.backend=sd-lora"], "The sd-lora backend needs generator.base_model"),
    (["generator.backend=text-unet"], "The text-unet backend needs generator.text_encoder"),
    (["generator.prompt_template=a {kind}"], "may only contain the placeholder {class}"),
    (["generator.lora_rank=0"], "generator.lora_rank must be positive."),
])
def test_recipe_checks_the_text_keys(sets, message):
    with pytest.raises(SynthaugError, match=message.replace("(", r"\(").replace("{", r"\{").replace(".", r"\.")):
        load_recipe(None, sets)


DIGITS_3_7 = ConditionSchema("class", ("3", "7"), (3, 7), resolution=8, channels=1)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # StableDiffusionPipeline on the tiny scheduler's config
def test_sd_lora_encodes_prompts_as_stable_diffusion_does(parts):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from synthaug.generator.backends import Backend
    from synthaug.generator.lora import build_lora_denoiser

    sd = parts["sd"]
    model = build_lora_denoiser(load_recipe(None, sd_sets(parts, "unused")).generator, DIGITS_3_7, torch.device("cpu"))
    assert isinstance(model, Backend) and model.prompt((0,)) == "a photo of a 3, a digit" and model.prompt((2,)) == ""
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(sd / "vae"), text_encoder=CLIPTextModel.from_pretrained(sd / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(sd / "tokenizer"), unet=UNet2DConditionModel.from_pretrained(sd / "unet"),
        scheduler=DDPMScheduler.from_pretrained(sd / "scheduler"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    want, _ = pipe.encode_prompt("a photo of a 3, a digit", "cpu", 1, False)
    ours, _ = model.prompts(torch.tensor([0]))
    assert torch.allclose(ours, want, atol=1e-6)
    # masking CLIP's padding (what synthaug did before) gives other embeddings: the test tells the two apart
    tokens = pipe.tokenizer(["a photo of a 3, a digit"], padding="max_length", max_length=24, return_tensors="pt")
    masked = pipe.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    assert not torch.allclose(masked, want, atol=1e-4)
    # and the frozen U-Net (its LoRA aside) cross-attends to all of it, unmasked, as in StableDiffusionPipeline
    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 4, 4), torch.tensor([10])
    with torch.no_grad():
        assert torch.allclose(model(x, t, torch.tensor([0])), model.unet(x, t, encoder_hidden_states=want).sample, atol=1e-5)
    # encode / decode: uint8 pixels <-> scaled latents, an image's latent independent of the others encoded with it
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    z = model.encode(images)
    assert z.shape == (3, *model.sample_shape) == (3, 4, 4, 4)
    assert torch.equal(model.encode(images[1:2]), z[1:2])
    assert model.decode(z, network_batch=2).shape == (3, 1, 8, 8)


def test_text_unet_masks_t5_padding_in_the_encoder_and_the_unet(parts):
    import torch

    from synthaug.generator.backends import Backend
    from synthaug.generator.text import build_text_denoiser

    torch.manual_seed(0)
    model = build_text_denoiser(load_recipe(None, text_unet_sets(parts, "unused")).generator, DIGITS_3_7,
                                torch.device("cpu")).eval()
    assert isinstance(model, Backend) and model.prompts.mask_encoder
    context, mask = model.prompts(torch.tensor([0]))
    tokens = model.prompts.tokenizer(["a photo of a 3, a digit"], padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        want = model.prompts.encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    assert torch.allclose(context, want) and torch.equal(mask, tokens.attention_mask)
    assert 0 < int(mask.sum()) < mask.numel()  # a padded prompt
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([10])
    emb, m = model.prompts.cache[(0,)]
    with torch.no_grad():
        before = model(x, t, torch.tensor([0]))
        model.prompts.cache[(0,)] = (torch.where(m[:, None].bool(), emb, emb + 5.0), m)  # other padding embeddings
        assert torch.allclose(model(x, t, torch.tensor([0])), before, atol=1e-5)  # the U-Net does not see them
        model.prompts.cache[(0,)] = (emb + 5.0 * m[:, None], m)  # other token embeddings
        assert not torch.allclose(model(x, t, torch.tensor([0])), before, atol=1e-4)  # it sees those
    assert torch.equal(model.encode(torch.full((1, 1, 8, 8), 255, dtype=torch.uint8)), torch.ones(1, 1, 8, 8))


def test_sd_lora_trains_saves_loads_and_generates_through_the_cli(parts, tmp_path):
    run_dir = tmp_path / "run"
    result = cli("train", *as_cli(sd_sets(parts, run_dir)))
    assert result.exit_code == 0, result.output
    # only the LoRA is saved: the base model is read again from its folder, whose sha256 the run records
    lora = load_file(run_dir / "ema" / "lora" / "pytorch_lora_weights.safetensors")
    assert lora and all("lora" in k for k in lora)
    assert not (run_dir / "ema" / "unet").exists()
    text = json.loads((run_dir / "run.json").read_text())["text"]
    base_sha = folder_sha256(parts["sd"], ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))
    assert text["backend"] == "sd-lora" and text["base_model_sha256"] == base_sha and text["lora_rank"] == 4
    assert text["prompt_template"] == TEMPLATE and text["prompts"][3] == "a photo of a 3, a digit"
    state = json.loads((run_dir / "state" / "state.json").read_text())
    assert state["step"] == 2 and state["finished"]

    out = tmp_path / "s"
    result = cli("generate", "--run", run_dir, "--class", "3", "--class", "7", "--num", "4", "--out", out, "--shard-size", "3")
    assert result.exit_code == 0, result.output
    samples = read_samples(out)
    assert len(samples) == 4 and all(s["png"].shape == (8, 8, 3) for s in samples)  # grey PNGs decode as RGB
    metas = [s["json"] for s in samples]
    assert {m["prompt"] for m in metas} == {"a photo of a 3, a digit", "a photo of a 7, a digit"}
    assert all(m["base_model_sha256"] == base_sha and m["backend"] == "sd-lora" for m in metas)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["text"]["base_model_sha256"] == base_sha and manifest["num_samples"] == 4

    # the library: uint8 at the data resolution, and an image does not depend on its batch
    gen = Generator.load(run_dir, device="cpu")
    images, labels = gen.sample(["3"], n=2, seed=5)
    assert images.shape == (2, 1, 8, 8) and str(images.dtype) == "torch.uint8" and labels.tolist() == [3, 3]
    conds = gen.resolve_classes(["3"]) * 2
    together = gen.sample_conditions(conds, [3, 4], gen.sampling)
    alone = np.concatenate([gen.sample_conditions(conds[:1], [s], gen.sampling) for s in (3, 4)])
    assert np.array_equal(together, alone)


def test_sd_lora_resumes_exactly(parts, tmp_path):
    constant = "generator.lr_schedule=constant"  # so a longer duration does not change the first steps' learning rate
    straight = train_generator(load_recipe(None, [*sd_sets(parts, tmp_path / "a"), constant, "generator.duration_kimg=0.032"]))
    train_generator(load_recipe(None, [*sd_sets(parts, tmp_path / "b"), constant]))  # 2 steps, then 2 more
    resumed = train_generator(load_recipe(None, [*sd_sets(parts, tmp_path / "b"), constant, "generator.duration_kimg=0.032"]))
    assert json.loads((resumed.state_dir / "state.json").read_text())["step"] == 4
    assert resumed.weights_sha256() == straight.weights_sha256()


def test_sd_lora_latents_streamed_from_their_disk_cache_give_the_same_run(parts, tmp_path, monkeypatch):
    """Over the device budget, the VAE latents are encoded once into an on-disk cache, memory-mapped, and each
    step's share streamed from it: the same LoRA weights as with the latents held on the device."""
    held = train_generator(load_recipe(None, [*sd_sets(parts, tmp_path / "held"), "generator.flip=true"]))
    monkeypatch.setenv("SYNTHAUG_RESIDENT_BYTES", "0")
    streamed = train_generator(load_recipe(None, [*sd_sets(parts, tmp_path / "streamed"), "generator.flip=true"]))
    assert streamed.weights_sha256() == held.weights_sha256()
    from synthaug.cache import cache_root

    cached = list((cache_root() / "latents").glob("*.npy"))
    assert len(cached) == 1 and np.load(cached[0], mmap_mode="r").shape[0] == 2  # the images and their mirror images
    again = train_generator(load_recipe(None, [*sd_sets(parts, tmp_path / "again"), "generator.flip=true"]))
    assert again.weights_sha256() == held.weights_sha256()  # read back from the cache


def test_text_unet_on_a_t5_encoder_trains_and_writes_shards(parts, tmp_path):
    run = train_generator(load_recipe(None, text_unet_sets(parts, tmp_path / "run")))
    config = json.loads((run.ema_dir / "unet" / "config.json").read_text())
    assert config["_class_name"] == "UNet2DConditionModel" and config["cross_attention_dim"] == 32
    assert "CrossAttnDownBlock2D" in config["down_block_types"]
    text = json.loads(run.info_file.read_text())["text"]
    assert text["backend"] == "text-unet" and text["text_encoder_sha256"] == folder_sha256(parts["t5"])
    manifest = write_shards(run.path, tmp_path / "s", ["1", "2"], per_class=2, steps=2)
    assert manifest["num_samples"] == 4 and manifest["run"]["text"]["prompts"][1] == "a photo of a 1, a digit"
    metas = [s["json"] for s in read_samples(tmp_path / "s")]
    assert sorted(m["prompt"] for m in metas) == ["a photo of a 1, a digit"] * 2 + ["a photo of a 2, a digit"] * 2
    assert all(m["text_encoder_sha256"] == text["text_encoder_sha256"] for m in metas)
    # guidance off and on draw different images from the same seeds (the null is the empty prompt)
    gen = Generator.load(run.path, device="cpu")
    plain, _ = gen.sample(["1"], n=2, guidance=1.0)
    guided, _ = gen.sample(["1"], n=2, guidance=4.0)
    assert plain.shape == (2, 1, 8, 8) and not np.array_equal(plain.numpy(), guided.numpy())


def test_a_missing_base_model_folder_is_one_sentence(tmp_path):
    sets = [*TINY, "generator.backend=sd-lora", f"generator.base_model={tmp_path / 'nowhere' / 'sd'}", f"run_dir={tmp_path / 'r'}"]
    result = cli("train", *as_cli(sets))
    assert result.exit_code == 1
    assert "The folder " in result.output and "does not exist; point generator.base_model at a local model folder" in result.output


@pytest.mark.parametrize("missing, sets, sentence", [
    ("peft", sd_sets, "The sd-lora backend needs transformers and peft; install them with pip install 'synthaug[text]'."),
    ("transformers", text_unet_sets, "The text-unet backend needs transformers; install it with pip install 'synthaug[text]'."),
])
def test_missing_optional_dependencies_say_how_to_install_them(parts, tmp_path, monkeypatch, missing, sets, sentence):
    monkeypatch.setitem(sys.modules, missing, None)  # importing it now raises ImportError
    result = cli("train", *as_cli(sets(parts, tmp_path / "r")))
    assert result.exit_code == 1 and sentence in result.output


def test_benchmark_accepts_a_text_recipe(parts, tmp_path, fid_weights):
    from PIL import Image
    from test_benchmark import TINY_BENCH

    from synthaug.benchmark import run_benchmark

    root, rng = tmp_path / "bars", np.random.default_rng(0)
    for name in ("horizontal", "vertical"):
        (root / name).mkdir(parents=True)
        for k in range(8):
            a = rng.integers(0, 40, (8, 8, 3)).astype(np.uint8)
            if name == "vertical":
                a[:, 3:5] = 230
            else:
                a[3:5, :] = 230
            Image.fromarray(a).save(root / name / f"{k}.png")
    recipe = tiny_recipe(tmp_path / "run", f"data.spec=imagefolder:{root}", "data.resolution=8", *TWO_STEPS, *TINY_BENCH,
                         "generator.backend=sd-lora", f"generator.base_model={parts['sd']}",
                         "generator.prompt_template=a photo of {class} bars", "benchmark.guidance_sweep=[2.0]")
    report = run_benchmark(recipe, out=tmp_path / "report", command="synthaug benchmark sd-lora")
    low, full = report["settings"]
    assert low["generator"]["run"].endswith("shots-3") and low["generator"]["train_images"] == 6
    # the x1 arm trained on one synthetic image per real one, drawn by the sd-lora generator
    x1 = full["arms"]["real + classic aug + synthetic (guidance 2) x1"]
    assert x1["training_images"] == {"real": full["train_images"], "synthetic": full["train_images"]}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["text"]["prompts"] == [
        "a photo of horizontal bars", "a photo of vertical bars"]


@pytest.mark.parametrize("backend", ["sd-lora", "text-unet"])
def test_real_guided_variations_work_for_the_text_backends(parts, tmp_path, backend):
    """`generate --from-real` on both text backends (sd-lora through the VAE latents): the run's own real images
    are the sources, each sample records its source and strength, and a strength near 0 keeps the source."""
    sets = (sd_sets if backend == "sd-lora" else text_unet_sets)(parts, tmp_path / "run")
    run = train_generator(load_recipe(None, sets))
    manifest = write_shards(run.path, tmp_path / "v", ["1", "2"], per_class=2, steps=4, from_real=True, strength=0.5)
    metas = [s["json"] for s in read_samples(tmp_path / "v")]
    sources = set(run.training_images().sources)
    assert manifest["num_samples"] == 4 and all(m["source"] in sources and m["strength"] == 0.5 for m in metas)
    assert all(m["steps_run"] == 2 for m in metas)  # half of the 4 steps, as img2img pipelines do
    if backend == "text-unet":  # (sd-lora's random tiny VAE does not reconstruct images, so only pixel space here)
        gen, train = Generator.load(run.path, device="cpu"), run.training_images()
        image = torch.from_numpy(np.asarray(train.images[:1])).permute(0, 3, 1, 2)
        kept = gen.vary(image, [train.class_names[train.labels[0]]], strength=0.02, seed=0, steps=50)
        noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, image.shape)).float()
        assert (kept.float() - image.float()).abs().mean() < (noise - image.float()).abs().mean() / 3  # near its source
