"""Text conditioning: class names and attribute levels -> prompts -> a frozen text encoder's embeddings,
and the Imagen-style text-conditioned pixel U-Net (``generator.backend = "text-unet"``).

A text denoiser takes the same integer conditions as the class/attribute :class:`Denoiser` (a class
id, or attribute levels, with the same null), so the training loop, the sampler, guidance and
seeding serve every backend. The null condition is the empty prompt, so classifier-free guidance
drops the text. transformers (and peft for sd-lora) are optional: ``pip install 'synthaug[text]'``.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path

import torch
from torch import nn

from synthaug.errors import SynthaugError
from synthaug.conditions import ConditionSchema
from synthaug.generator.model import PixelSpace, unet_config

MAX_PROMPT_TOKENS = 77  # CLIP's context; longer T5 prompts are cut here too
LEVEL_WORDS = ("no", "slight", "some", "noticeable", "strong", "very strong")  # CelebA-Dialog style degrees
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
T5_TYPES = ("t5", "mt5", "umt5")  # model_type values of the T5 family


def require(backend: str, *modules: str) -> None:
    """Import the optional ``modules`` a backend needs, or say how to install them."""
    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError:
        raise SynthaugError(f"The {backend} backend needs {' and '.join(modules)}; "
                            f"install {'them' if len(modules) > 1 else 'it'} with pip install 'synthaug[text]'.") from None


def resolve_model_path(source: str, key: str) -> str:
    """A local folder, or a hub id for users with internet; a path that does not exist is an error."""
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    if HUB_ID.match(source) and not source.startswith((".", "~")):
        return source
    raise SynthaugError(f"The folder {source} of {key} does not exist; point {key} at a local model folder "
                        "(or a hub id with internet).")


def folder_sha256(folder: str | Path, subfolders: tuple[str, ...] = ("",)) -> str:
    """sha256 over the files (names and contents) of a local model folder's ``subfolders``; "" for a hub id."""
    root = Path(folder)
    if not root.is_dir():
        return ""
    digest = hashlib.sha256()
    for sub in subfolders:
        base = root / sub
        files = sorted(p for p in base.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
        for p in files:
            digest.update(str(p.relative_to(root)).encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


class Prompts:
    """The prompt of a condition: a class name through ``template``, or a caption of attribute levels.

    >>> s = ConditionSchema("class", ("sparrow", "wren"), (0, 1), resolution=8, channels=3)
    >>> p = Prompts(s, "a photo of a {class}, a bird")
    >>> p.text((1,)), p.text((2,))
    ('a photo of a wren, a bird', '')
    """

    def __init__(self, schema: ConditionSchema, template: str):
        self.schema, self.template = schema, template

    def text(self, value: tuple[int, ...]) -> str:
        s = self.schema
        if s.kind == "class":
            c = int(value[0])
            return "" if c == s.num_classes else self.template.format(**{"class": s.class_names[c]})
        parts = []
        for name, level, levels in zip(s.attribute_names, value, s.attribute_levels):
            if level < levels:  # the null level leaves the attribute out of the caption
                word = LEVEL_WORDS[round(level / max(levels - 1, 1) * (len(LEVEL_WORDS) - 1))]
                parts.append(f"{word} {name.replace('_', ' ').lower()}")
        return f"a face with {', '.join(parts)}" if parts else ""

    def describe(self) -> dict:
        """What a run records about its prompts."""
        s = self.schema
        if s.kind == "class":
            return {"prompt_template": self.template, "prompts": [self.text((c,)) for c in range(s.num_classes)]}
        return {"caption": "a face with {level word} {attribute}, ...", "level_words": list(LEVEL_WORDS)}


class PromptEncoder:
    """Conditions (B,) or (B, A) -> frozen text embeddings (B, L, D) and their token mask (B, L), one prompt
    at a time and cached.

    Each prompt is encoded alone (and once), so an embedding never depends on which other prompts
    shared a batch. Not a module: its encoder is frozen and never saved with a generator.

    The text encoder sees the padding mask as the pipelines built on it use it: T5 always (as Imagen and
    DeepFloyd IF encode prompts); a CLIP text model only when its config sets ``use_attention_mask``,
    exactly as ``StableDiffusionPipeline.encode_prompt`` does, because Stable Diffusion's U-Net was
    trained on the unmasked CLIP embeddings of padded prompts, padding positions included.
    """

    def __init__(self, prompts: Prompts, tokenizer, text_encoder, device: torch.device):
        self.prompts, self.tokenizer = prompts, tokenizer
        self.encoder = text_encoder.to(device).eval().requires_grad_(False)
        self.device = device
        self.max_length = min(int(getattr(tokenizer, "model_max_length", MAX_PROMPT_TOKENS)), MAX_PROMPT_TOKENS)
        config = self.encoder.config
        self.mask_encoder = config.model_type in T5_TYPES or bool(getattr(config, "use_attention_mask", False))
        self.cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def dim(self) -> int:
        config = self.encoder.config
        return getattr(config, "d_model", None) or config.hidden_size

    def text(self, value: tuple[int, ...]) -> str:
        """The prompt of one condition value."""
        return self.prompts.text(value)

    @torch.no_grad()
    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt -> its embedding (L, D) and its token mask (L,) (1 for a token, 0 for padding)."""
        tokens = self.tokenizer([text], padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        out = self.encoder(input_ids=tokens.input_ids.to(self.device), attention_mask=mask if self.mask_encoder else None)
        return out.last_hidden_state[0].float(), mask[0]

    def __call__(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [tuple(row) for row in condition.reshape(len(condition), -1).tolist()]
        for key in keys:
            if key not in self.cache:
                self.cache[key] = self.encode(self.text(key))
        return torch.stack([self.cache[k][0] for k in keys]), torch.stack([self.cache[k][1] for k in keys])


def load_text_encoder(source: str, key: str, backend: str, device: torch.device):
    """A frozen T5 encoder or CLIP text model and its tokenizer from a folder (or its ``text_encoder/``
    and ``tokenizer/`` subfolders, as in a Stable Diffusion folder)."""
    require(backend, "transformers")
    from transformers import AutoConfig, AutoTokenizer, CLIPTextModel, T5EncoderModel

    source = resolve_model_path(source, key)
    local = Path(source)
    model_sub = "text_encoder" if (local / "text_encoder").is_dir() else ""
    tok_sub = "tokenizer" if (local / "tokenizer").is_dir() else ""
    try:
        config = AutoConfig.from_pretrained(source, subfolder=model_sub)
        cls = T5EncoderModel if config.model_type in T5_TYPES else CLIPTextModel
        encoder = cls.from_pretrained(source, subfolder=model_sub)
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder=tok_sub)
    except (OSError, ValueError):
        raise unreadable_model(source, key, "a T5 or CLIP text encoder with its tokenizer") from None
    return tokenizer, encoder.to(device)


def unreadable_model(source: str, key: str, what: str) -> SynthaugError:
    if Path(source).is_dir():
        return SynthaugError(f"{source} ({key}) holds no {what}; point {key} at such a folder.")
    return SynthaugError(f"{source} ({key}) is no local folder and could not be loaded from the hub (no internet, "
                         f"or no such model); point {key} at a local folder.")


def prompt_encoder(g_cfg, schema: ConditionSchema, source: str, key: str, device: torch.device) -> PromptEncoder:
    tokenizer, encoder = load_text_encoder(source, key, g_cfg.backend, device)
    return PromptEncoder(Prompts(schema, g_cfg.prompt_template), tokenizer, encoder, device)


class TextDenoiser(PixelSpace, nn.Module):
    """``forward(x_t, t, condition)`` for a pixel ``UNet2DConditionModel`` cross-attending to the prompt embedding
    (a :class:`~synthaug.generator.backends.Backend`)."""

    def __init__(self, unet, prompts: PromptEncoder):
        super().__init__()
        self.unet = unet
        self.prompts = prompts  # frozen, not a submodule

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        context, mask = self.prompts(condition)
        # The U-Net cross-attends to the prompt's tokens only: UNet2DConditionModel turns encoder_attention_mask
        # (B, L) into a -10000 bias on the padding keys of every cross-attention (its forward, then each
        # Transformer2DModel's attn2). This U-Net is trained from scratch, so no pre-training fixes what it
        # must see, and with the mask its output does not depend on how much padding a prompt has (T5's
        # padding embeddings are not zero). sd-lora's pretrained U-Net, by contrast, gets no mask.
        return self.unet(sample, timestep, encoder_hidden_states=context.to(sample.device, sample.dtype),
                         encoder_attention_mask=mask.to(sample.device)).sample

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.unet.parameters())

    def save_pretrained(self, folder: Path) -> None:
        self.unet.save_pretrained(Path(folder) / "unet")

    def prompt(self, condition_value: tuple[int, ...]) -> str | None:
        return self.prompts.text(condition_value)


def text_unet_config(schema: ConditionSchema, g_cfg, context_dim: int, head_dim: int = 32) -> dict:
    """``UNet2DConditionModel`` arguments: the preset's shape (see :func:`~synthaug.generator.model.unet_config`)
    with cross-attention to the text where the class U-Net has self-attention."""
    base = unet_config(schema, g_cfg.preset, base_channels=g_cfg.base_channels, channel_mult=g_cfg.channel_mult,
                       layers_per_block=g_cfg.layers_per_block, dropout=g_cfg.dropout)
    channels = base["block_out_channels"]
    return dict(
        sample_size=base["sample_size"],
        in_channels=base["in_channels"],
        out_channels=base["out_channels"],
        layers_per_block=base["layers_per_block"],
        block_out_channels=channels,
        down_block_types=tuple(t.replace("AttnDownBlock2D", "CrossAttnDownBlock2D") for t in base["down_block_types"]),
        up_block_types=tuple(t.replace("AttnUpBlock2D", "CrossAttnUpBlock2D") for t in base["up_block_types"]),
        norm_num_groups=base["norm_num_groups"],
        cross_attention_dim=context_dim,
        attention_head_dim=tuple(max(1, c // head_dim) for c in channels),  # diffusers reads this as heads per block
        resnet_time_scale_shift="scale_shift",
        dropout=g_cfg.dropout,
    )


def build_text_denoiser(g_cfg, schema: ConditionSchema, device: torch.device) -> TextDenoiser:
    """A freshly initialised text-conditioned pixel U-Net on the frozen ``generator.text_encoder``."""
    from diffusers import UNet2DConditionModel

    prompts = prompt_encoder(g_cfg, schema, g_cfg.text_encoder, "generator.text_encoder", device)
    return TextDenoiser(UNet2DConditionModel(**text_unet_config(schema, g_cfg, prompts.dim)), prompts)


def load_text_denoiser(folder: Path, g_cfg, schema: ConditionSchema, device: torch.device) -> TextDenoiser:
    from diffusers import UNet2DConditionModel

    prompts = prompt_encoder(g_cfg, schema, g_cfg.text_encoder, "generator.text_encoder", device)
    return TextDenoiser(UNet2DConditionModel.from_pretrained(Path(folder) / "unet"), prompts)
