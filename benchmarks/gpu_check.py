"""GPU check: every GPU recipe briefly trained, sampled and benchmarked on one GPU, in at most 8 minutes.

For each recipe (``cub``, ``cars``, ``faces``, ``birds``, ``birds-imagen``, ``birds-sd-lora``), on made-up
images of the recipe's resolution (no real data is needed; speed does not depend on the pixels):

1. prepare: write the images (a class-per-folder tree; a CelebA-Dialog tree for ``faces``) and, for the
   text recipes, randomly initialised components of the real sizes saved to a temporary folder (a T5
   v1.1-large encoder; Stable Diffusion 1.5's U-Net, VAE and CLIP ViT-L/14 text encoder), with a
   character-level stand-in tokenizer. Nothing is downloaded.
2. train: ``train_generator`` for a few hundred steps (fewer for the largest), bf16 autocast and
   channels-last (what synthaug does on a GPU), ``torch.compile`` off: images/s, step time, peak memory.
3. generate: up to 1,000 images with the recipe's sampler, steps and guidance, within the stage's share of
   time: images/s and peak memory.
4. benchmark slice: the judge classifier (the recipe's timm model; ImageNet weights when the offline
   packages are installed), Inception features of the generated images (the FID weights when installed,
   else the same network with random weights: the same speed), and one classifier arm (real images with
   classic augmentation), each for a few hundred steps.
5. train compiled: step 2 again with ``generator.compile = true``; the compile time is the extra wall time
   to the first log line over the eager run's.

On a GPU each recipe runs in a child process with a time limit (its share of ``--limit-s`` plus what the
recipes before it left unused), so a hang, a crash or an out-of-memory error costs one recipe, and the
stages a killed child did finish are kept. ``--dry`` runs every stage on the CPU at toy size in seconds
(``torch.compile`` goes through dynamo with compilation disabled), for the tests.

Usage:
    python benchmarks/gpu_check.py                        # all recipes, writes results/gpu_<device>.json
    python benchmarks/gpu_check.py --recipes cub birds    # a subset
    python benchmarks/gpu_check.py --dry --out /tmp/gpu_dry.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import RECIPES, RESULTS, logged_throughput, machine

# Nothing may be fetched from the hub, whatever the environment says.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@dataclass(frozen=True)
class Plan:
    """How much of a recipe the check runs, and the seconds it may take (a share of the 8 minutes)."""

    steps: int  # training steps, each of the recipe's batch size
    budget_s: float
    classes: int = 20
    per_class: int = 16


PLANS = {
    "cub": Plan(steps=300, budget_s=55),
    "cars": Plan(steps=300, budget_s=40),
    "faces": Plan(steps=300, budget_s=55),
    "birds": Plan(steps=200, budget_s=70),
    "birds-imagen": Plan(steps=200, budget_s=85),
    "birds-sd-lora": Plan(steps=24, budget_s=135, classes=8, per_class=8),  # 4 micro-batches of 8 at 512 px each
}
LIMIT_S = 480  # the whole command, on one H100/H200
IMAGES = 1000  # generated per recipe (at most; the stage stops when its time is up)
CLASSIFIER_STEPS = 200  # the judge and the classifier arm
GENERATE_SHARE = 0.35  # of a recipe's budget, at most, for drawing images
DRY = {"steps": 2, "images": 4, "classifier_steps": 2, "classes": 3, "per_class": 4, "resolution": 8}


# -- made-up data and model parts -------------------------------------------------------------------
def made_up_images(n: int, size: int, seed: int):
    """(n, size, size, 3) uint8: smooth random colour fields (cheap to encode, not constant)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, 4, 4), generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.rand((n, 3, size, size), generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().astype(np.uint8)


def write_imagefolder(root: Path, classes: int, per_class: int, size: int) -> str:
    from PIL import Image

    for c in range(classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(made_up_images(per_class, size, seed=c)):
            Image.fromarray(image).save(folder / f"{i:04d}.jpg", quality=90)
    return f"imagefolder:{root}"


def write_dialog_tree(root: Path, images: int, size: int) -> str:
    """A CelebA-Dialog tree: aligned 'faces' and combined_annotation.txt with random levels 0-5."""
    import numpy as np
    from PIL import Image

    folder = root / "img_align_celeba"
    folder.mkdir(parents=True, exist_ok=True)
    levels = np.random.default_rng(0).integers(0, 6, (images, 5))
    lines = ["img_name Bangs Eyeglasses No_Beard Smiling Young"]
    for i, image in enumerate(made_up_images(images, size, seed=0)):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(image).save(folder / name, quality=90)
        lines.append(name + " " + " ".join(str(v) for v in levels[i]))
    (root / "combined_annotation.txt").write_text("\n".join(lines) + "\n")
    return f"celeba-dialog:{root}"


def write_tokenizer(folder: Path, max_length: int) -> int:
    """A character-level CLIP tokenizer (no merges) written locally: a stand-in for T5's and CLIP's (no download)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789,._'":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length).save_pretrained(folder)
    return len(vocab)


def t5_config(tiny: bool, vocab: int):
    """google/t5-v1_1-large's encoder config (341 M parameters), or a tiny one over the stand-in vocabulary."""
    from transformers import T5Config

    if tiny:
        return T5Config(vocab_size=vocab, d_model=32, d_ff=37, num_layers=2, num_heads=4, d_kv=8)
    return T5Config(vocab_size=32128, d_model=1024, d_ff=2816, d_kv=64, num_layers=24, num_heads=16,
                    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, tie_word_embeddings=False)


def stable_diffusion_configs(tiny: bool, vocab: int, max_length: int) -> dict:
    """Stable Diffusion 1.5's parts (runwayml/stable-diffusion-v1-5): CLIP ViT-L/14's text config, the U-Net's
    (860 M parameters) and the VAE's keyword arguments; or tiny ones over the stand-in vocabulary."""
    from transformers import CLIPTextConfig

    if tiny:
        return {"text_encoder": CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                               num_hidden_layers=2, max_position_embeddings=max_length, bos_token_id=0,
                                               eos_token_id=1, pad_token_id=1),
                "unet": dict(sample_size=4, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=32,
                             norm_num_groups=8, attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
                "vae": dict(block_out_channels=(8, 16), norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, sample_size=8)}
    return {"text_encoder": CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                           num_hidden_layers=12, max_position_embeddings=77, projection_dim=768,
                                           hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1),
            "unet": dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                         attention_head_dim=8, norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                         up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
            "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.18215)}


def stable_diffusion_parts(configs: dict) -> dict:
    """The randomly initialised text encoder, U-Net and VAE (built on the current default device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return {"text_encoder": CLIPTextModel(configs["text_encoder"]),
            "unet": UNet2DConditionModel(in_channels=4, out_channels=4, **configs["unet"]),
            "vae": AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **configs["vae"])}


def write_t5(folder: Path, tiny: bool, device: str) -> Path:
    """A randomly initialised T5 encoder folder (with the stand-in tokenizer) of :func:`t5_config`'s size."""
    import torch
    from transformers import T5EncoderModel

    vocab = write_tokenizer(folder, 24 if tiny else 77)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it is fast (the GPU), saved from there
        model = T5EncoderModel(t5_config(tiny, vocab))
    model.save_pretrained(folder)
    return folder


def write_stable_diffusion(folder: Path, tiny: bool, device: str) -> Path:
    """A randomly initialised Stable Diffusion folder (diffusers layout: unet/, vae/, text_encoder/, tokenizer/,
    scheduler/) of :func:`stable_diffusion_configs`' sizes, with SD 1.5's noise schedule."""
    import torch
    from diffusers import DDPMScheduler

    max_length = 24 if tiny else 77
    vocab = write_tokenizer(folder / "tokenizer", max_length)
    torch.manual_seed(0)
    with torch.device(device):
        parts = stable_diffusion_parts(stable_diffusion_configs(tiny, vocab, max_length))
    for name, model in parts.items():
        model.save_pretrained(folder / name)
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                  clip_sample=False, steps_offset=1).save_pretrained(folder / "scheduler")
    return folder


def random_inception_weights(folder: Path) -> Path:
    """The FID Inception network's state dict with random weights (when no offline FID weights are installed):
    the same network, so the same speed."""
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = folder / "random_inception.pth"
    torch.save(net.state_dict(), path)
    return path


# -- one recipe -------------------------------------------------------------------------------------
class Recorder:
    """A recipe's results, written to ``path`` after every stage (atomically), so a killed child loses nothing done."""

    def __init__(self, path: Path, name: str, plan: Plan):
        self.path = path
        self.result = {"recipe": name, "budget_s": plan.budget_s, "stages": {}}
        self.start = time.perf_counter()
        self.save()

    def stage(self, name: str, values: dict) -> None:
        self.result["stages"][name] = values
        self.save()

    def save(self) -> None:
        self.result["seconds"] = round(time.perf_counter() - self.start, 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        tmp.replace(self.path)


class Gpu:
    """Synchronised timing and peak memory on CUDA; plain timing on the CPU."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, device == "cuda"

    def begin(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        return time.perf_counter()

    def end(self, start: float) -> dict:
        if self.cuda:
            self.torch.cuda.synchronize()
        out = {"seconds": round(time.perf_counter() - start, 2)}
        if self.cuda:
            out["peak_gib"] = round(self.torch.cuda.max_memory_allocated() / 2**30, 2)
        return out


def recipe_settings(name: str, plan: Plan, spec: str, parts: dict, dry: bool) -> list[str]:
    """Overrides that point the recipe at the made-up data and parts and size the run (toy size in --dry)."""
    from synthaug.recipe import load_recipe

    recipe = load_recipe(RECIPES / f"{name}.toml")
    g = recipe.generator
    sets = [f"data.spec={spec}", "data.split=stratified", "generator.grid_every_kimg=0"]
    if "text_encoder" in parts:
        sets.append(f"generator.text_encoder={parts['text_encoder']}")
    if "base_model" in parts:
        sets.append(f"generator.base_model={parts['base_model']}")
    if dry:
        sets += [f"data.resolution={DRY['resolution']}", "generator.batch_size=4", "sampling.steps=2", "sampling.batch_size=8",
                 "sampling.network_batch=8", "benchmark.classifier=test_resnet", "benchmark.pretrained=none",
                 "benchmark.classifier_resolution=16", "benchmark.batch_size=8", "generator.mixed_precision=no"]
        if g.backend != "sd-lora":
            sets += ["generator.preset=tiny", "generator.base_channels=8"]
        else:
            sets.append("generator.batch_per_device=2")  # gradient accumulation, as the recipe does
    else:
        sets.append("generator.mixed_precision=bf16")
    batch = 4 if dry else g.batch_size
    steps = DRY["steps"] if dry else plan.steps
    log_steps = max(1, steps // 10)
    sets += [f"generator.duration_kimg={steps * batch / 1000}", f"generator.log_every_kimg={log_steps * batch / 1000}",
             f"generator.snapshot_every_kimg={10 * steps * batch / 1000}"]
    return sets


def train_stage(name: str, sets: list[str], run_dir: Path, compile_: bool, gpu: Gpu) -> dict:
    from synthaug.generator.train import train_generator
    from synthaug.recipe import load_recipe

    recipe = load_recipe(RECIPES / f"{name}.toml", [*sets, f"generator.compile={str(compile_).lower()}", f"run_dir={run_dir}"])
    g = recipe.generator
    wall_start = time.time()
    start = gpu.begin()
    run = train_generator(recipe, fresh=True)
    out = gpu.end(start)
    log = [json.loads(line) for line in run.log_file.read_text().splitlines()]
    steps = log[-1]["step"]
    warm = min(max(5, steps // 5), log[-2]["step"]) if len(log) > 1 else 0  # leave start-up (and compilation) out
    images, seconds = logged_throughput(run, warm) if len(log) > 1 else (steps * g.batch_size, out["seconds"])
    ips = images / max(seconds, 1e-9)
    out.update(steps=steps, batch_size=g.batch_size, images_per_s=round(ips, 1), step_ms=round(1000 * g.batch_size / ips, 2),
               first_log_after_s=round(log[0]["time"] - wall_start, 2), first_log_step=log[0]["step"],
               mixed_precision=g.mixed_precision, compile=g.compile)
    return out


def generate_stage(run_dir: Path, images: int, seconds: float, device: str, gpu: Gpu) -> tuple[dict, object]:
    """Up to ``images`` images with the run's sampling settings, chunk by chunk until ``seconds`` have passed."""
    import numpy as np

    from synthaug.generator import Generator
    from synthaug.generator.pipeline import plan_conditions, split_evenly

    gen = Generator.load(run_dir, device=device)
    if gen.schema.kind == "class":
        conditions = gen.all_classes()
    else:  # attributes: every level of every attribute, the others unspecified
        conditions = [gen.attribute_condition({a: v}) for a, n in zip(gen.schema.attribute_names, gen.schema.attribute_levels)
                      for v in range(n)]
    plan = plan_conditions(conditions, split_evenly(images, len(conditions)), 0)
    s = gen.sampling
    out, done = [], 0
    start = gpu.begin()
    for first in range(0, len(plan), s.batch_size):
        chunk = plan[first : first + s.batch_size]
        out.append(gen.sample_conditions([c for c, _, _ in chunk], [seed for _, _, seed in chunk], s))
        done += len(chunk)
        if time.perf_counter() - start > seconds:
            break
    result = gpu.end(start)
    result.update(images=done, images_per_s=round(done / result["seconds"], 2), sampler=s.sampler, steps=s.steps,
                  guidance=s.guidance, network_batch=s.network_batch, autocast=str(gen.autocast_dtype))
    return result, np.concatenate(out)


def benchmark_stage(recipe, kind: str, generated, steps: int, device: str, work: Path, gpu: Gpu) -> dict:
    """The judge, Inception features of the generated images and one classifier arm, each timed."""
    import dataclasses

    import torch

    from synthaug.benchmark.arms import Arm, Images, run_arm
    from synthaug.benchmark.evaluate import Targets
    from synthaug.classifier import ClassifierConfig, train_classifier
    from synthaug.data import load_dataset
    from synthaug.errors import SynthaugError
    from synthaug.quality import features
    from synthaug.weights.fid_inception import fid_weights_path
    from synthaug.weights.timm_imagenet import imagenet_weights_file

    b = recipe.benchmark
    dev = torch.device(device)
    real = load_dataset(recipe.data)
    train, test = real.split("train"), real.split("test")
    targets = Targets.of_dataset(real, kind)
    config = ClassifierConfig.from_benchmark(b, steps=steps)
    pretrained = config.pretrained
    if pretrained == "offline":
        try:
            imagenet_weights_file(config.model)
        except SynthaugError:  # the registry package is not installed here: the same network from scratch
            config = dataclasses.replace(config, pretrained="none")
    out = {"classifier": config.model, "pretrained": config.pretrained if config.pretrained == pretrained else
           f"none (the offline {config.model} weights are not installed here)", "resolution": config.resolution,
           "batch_size": config.batch_size, "steps": steps}
    train_images = Images.of(train.images, targets.of(train), config.resolution, dev)
    test_images = Images.of(test.images, targets.of(test), config.resolution, dev)

    start = gpu.begin()
    train_classifier(train_images, None, targets.levels, config, seed=0, description="judge")
    judge = gpu.end(start)
    judge["images_per_s"] = round(steps * config.batch_size / judge["seconds"], 1)
    out["judge"] = judge

    try:
        weights, source = fid_weights_path(b.fid_weights or None), "the FID Inception weights"
        if weights is None:
            raise SynthaugError("download")  # never download here
    except SynthaugError:
        weights, source = random_inception_weights(work), "random weights (no offline FID weights here; same network and speed)"
    start = gpu.begin()
    features(generated, weights, dev)
    fid = gpu.end(start)
    fid.update(images=len(generated), images_per_s=round(len(generated) / fid["seconds"], 1), weights=source)
    out["fid_features"] = fid

    start = gpu.begin()
    arm = Arm("real + classic augmentation", augment=True)
    top1 = run_arm(arm, targets.levels, config, [0], test_images, real=train_images, flip=b.augment_flip)["top1"]
    arm_out = gpu.end(start)
    arm_out.update(arm=arm.name, images_per_s=round(steps * config.batch_size / arm_out["seconds"], 1),
                   top1_mean=round(float(top1["mean"]), 4))
    out["classifier_arm"] = arm_out
    return out


def run_recipe(name: str, plan: Plan, work: Path, result_path: Path, dry: bool, device: str) -> dict:
    """Every stage of one recipe; results saved after each (and why it failed, if it did)."""
    import torch

    if dry:
        torch._dynamo.config.disable = True  # the compile path runs, without compiling (seconds, not minutes)
    rec = Recorder(result_path, name, plan)
    try:
        stages(name, plan, work, rec, dry, device)
    except Exception as e:
        rec.result["status"] = f"failed after the {list(rec.result['stages'])[-1:] or ['start']} stage: {type(e).__name__}: {e}"[:600]
        rec.save()
        raise
    rec.result["status"] = "ok"
    rec.save()
    return rec.result


def stages(name: str, plan: Plan, work: Path, rec: Recorder, dry: bool, device: str) -> None:
    import torch

    from synthaug.data import load_dataset
    from synthaug.generator.backends import load_model
    from synthaug.conditions import ConditionSchema
    from synthaug.recipe import load_recipe
    from synthaug.runs import open_run

    gpu = Gpu(device)
    base = load_recipe(RECIPES / f"{name}.toml")
    res = DRY["resolution"] if dry else base.data.resolution
    classes = DRY["classes"] if dry else plan.classes
    per_class = DRY["per_class"] if dry else plan.per_class
    start = time.perf_counter()
    parts = {}
    data = work / "data"
    if base.generator.condition == "attributes":
        spec = write_dialog_tree(data, classes * per_class, res)
    else:
        spec = write_imagefolder(data, classes, per_class, res)
    build_on = device if device == "cuda" else "cpu"
    if base.generator.backend == "text-unet":
        parts["text_encoder"] = write_t5(work / "t5", dry, build_on)
    if base.generator.backend == "sd-lora":
        parts["base_model"] = write_stable_diffusion(work / "sd", dry, build_on)
    if device == "cuda":
        torch.cuda.empty_cache()
    sets = recipe_settings(name, plan, spec, parts, dry)
    recipe = load_recipe(RECIPES / f"{name}.toml", [*sets, f"run_dir={work / 'run'}"])
    load_dataset(recipe.data)  # decoded into the cache now, so neither training run pays for it
    rec.result.update(resolution=recipe.data.resolution, batch_size=recipe.generator.batch_size,
                      backend=recipe.generator.backend, preset=recipe.generator.preset, images_made_up=classes * per_class,
                      settings=sets)
    rec.stage("prepare", {"seconds": round(time.perf_counter() - start, 2), "parts": sorted(parts)})

    eager = train_stage(name, sets, work / "run", False, gpu)
    run = open_run(work / "run")
    schema = ConditionSchema.load(run.condition_file)
    model = load_model(run.ema_dir, recipe.generator, schema, torch.device("cpu"))
    eager["parameters_trained"] = sum(p.numel() for p in model.trainable_parameters())
    eager["parameters"] = sum(p.numel() for p in model.parameters())
    del model
    rec.stage("train", eager)

    images = DRY["images"] if dry else IMAGES
    generate, generated = generate_stage(work / "run", images, GENERATE_SHARE * plan.budget_s, device, gpu)
    rec.stage("generate", generate)

    steps = DRY["classifier_steps"] if dry else CLASSIFIER_STEPS
    rec.stage("benchmark", benchmark_stage(recipe, schema.kind, generated, steps, device, work, gpu))

    compiled = train_stage(name, sets, work / "run-compiled", True, gpu)
    compiled["compile_s"] = round(max(0.0, compiled["first_log_after_s"] - eager["first_log_after_s"]), 1)
    compiled["speedup_over_eager"] = round(compiled["images_per_s"] / eager["images_per_s"], 3)
    rec.stage("train_compiled", compiled)


# -- the command ------------------------------------------------------------------------------------
def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def scaled_plans(limit_s: float) -> dict[str, Plan]:
    """The plans with their time shares, and their training steps, scaled to a command limit other than LIMIT_S
    (a shorter check measures the same rates over fewer steps, at least 12)."""
    scale = limit_s / LIMIT_S
    return {name: dataclasses.replace(plan, budget_s=plan.budget_s * scale,
                                      steps=max(min(plan.steps, 12), round(plan.steps * min(1.0, scale))))
            for name, plan in PLANS.items()}


def run_child(name: str, plan: Plan, work: Path, timeout: float, dry: bool, limit_s: float = LIMIT_S) -> dict:
    """One recipe in a child process that is killed (with everything it started) at ``timeout`` seconds."""
    result_path = work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--work", str(work / name), "--result", str(result_path),
           "--limit-s", str(limit_s)]
    cmd += ["--dry"] if dry else []
    start = time.perf_counter()
    child = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = child.wait(timeout=timeout)
        status = "ok" if code == 0 else f"failed (exit code {code})"
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child and the compile workers it started
        child.wait()
        status = f"killed at its time limit ({timeout:.0f} s)"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {"recipe": name, "stages": {}}
    if status != "ok" and not str(result.get("status", "")).startswith("failed"):
        result["status"] = status  # killed, or died without recording why (e.g. out of host memory)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["time_limit_s"] = round(timeout, 1)
    return result


def table(results: dict) -> str:
    def get(r, stage, key, fmt="{:,.1f}"):
        v = r.get("stages", {}).get(stage, {})
        for k in key.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        return "-" if v is None else fmt.format(v)

    head = ("| recipe | px, batch | parameters (trained) | train img/s | step ms | peak GiB | compiled img/s | compile s | "
            "generate img/s (n) | peak GiB | judge img/s | FID features img/s | arm img/s | wall s (limit) | status |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r.get('resolution', '-')}, {r.get('batch_size', '-')} | {get(r, 'train', 'parameters', '{:,}')} "
            f"({get(r, 'train', 'parameters_trained', '{:,}')}) | {get(r, 'train', 'images_per_s')} | "
            f"{get(r, 'train', 'step_ms', '{:.1f}')} | "
            f"{get(r, 'train', 'peak_gib', '{:.1f}')} | {get(r, 'train_compiled', 'images_per_s')} | "
            f"{get(r, 'train_compiled', 'compile_s')} | {get(r, 'generate', 'images_per_s')} ({get(r, 'generate', 'images', '{}')}) | "
            f"{get(r, 'generate', 'peak_gib', '{:.1f}')} | {get(r, 'benchmark', 'judge.images_per_s')} | "
            f"{get(r, 'benchmark', 'fid_features.images_per_s')} | {get(r, 'benchmark', 'classifier_arm.images_per_s')} | "
            f"{r.get('wall_s', r.get('seconds', '-'))} ({r.get('time_limit_s', '-')}) | {r.get('status', '-')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(PLANS), choices=list(PLANS), help="default: all")
    parser.add_argument("--dry", action="store_true", help="every stage on the CPU at toy size (seconds), for the tests")
    parser.add_argument("--limit-s", type=float, default=LIMIT_S,
                        help="the whole command's time limit (default 480; each recipe's share scales with it)")
    parser.add_argument("--isolate", action="store_true", help="a child process per recipe also in --dry (always on a GPU)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/gpu_<device>.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    started = time.perf_counter()
    import torch

    device = "cpu" if args.dry else "cuda"
    if args.child:  # one recipe, in its own process
        args.work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("SYNTHAUG_CACHE", str(args.work / "cache"))
        run_recipe(args.child, scaled_plans(args.limit_s)[args.child], args.work, args.result, args.dry, device)
        return
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU is visible; run this on a GPU machine, or use --dry on a CPU.")
    name = "cpu (dry run)" if args.dry else torch.cuda.get_device_name(0)
    out = args.out or RESULTS / f"gpu_{device_slug(name)}.json"
    deadline = started + args.limit_s - 10  # time to write the results
    results = {}
    plans = scaled_plans(args.limit_s)
    with tempfile.TemporaryDirectory(prefix="synthaug-gpu-check-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("SYNTHAUG_CACHE", str(work / "cache"))  # fresh caches: nothing of the user's is touched
        for i, recipe in enumerate(args.recipes):
            plan = plans[recipe]
            later = sum(plans[r].budget_s for r in args.recipes[i + 1 :])
            limit = deadline - time.perf_counter() - later  # its share and whatever the recipes before it left
            if limit < min(20.0, plan.budget_s / 2):
                results[recipe] = {"recipe": recipe, "status": f"skipped: {max(0.0, limit):.0f} s left of its share", "stages": {}}
                continue
            print(f"== {recipe}: at most {limit:.0f} s", flush=True)
            if args.dry and not args.isolate:
                t0 = time.perf_counter()
                (work / recipe).mkdir(parents=True, exist_ok=True)
                try:
                    run_recipe(recipe, plan, work / recipe, work / f"{recipe}.json", True, device)
                except Exception:  # recorded in its result, and the command fails at the end
                    import traceback

                    traceback.print_exc()
                results[recipe] = json.loads((work / f"{recipe}.json").read_text())
                results[recipe]["wall_s"] = round(time.perf_counter() - t0, 1)
            else:
                results[recipe] = run_child(recipe, plan, work, limit, args.dry, args.limit_s)
        total = round(time.perf_counter() - started, 1)
        payload = {"device": name, "dry": args.dry, "limit_s": args.limit_s, "total_s": total,
                   "torch": torch.__version__, "recipes": results}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), **payload}, indent=1, default=str) + "\n")
    print(table(results))
    print(f"{name}: {total:.0f} s in all (limit {args.limit_s:.0f} s); wrote {out}")
    if any(r.get("status") != "ok" for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
