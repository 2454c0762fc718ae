"""synthaug: synthetic training data for image classifiers, with honest numbers on whether it helps.

The public API (each name is imported on first use, so `import synthaug` stays light):

- :func:`load_dataset`: a real dataset in its published layout, as uint8 images with labels and splits.
- :class:`Generator`: a trained generator (``Generator.load(run).sample(...)``).
- :func:`write_shards`: draw images into WebDataset shards with a manifest.
- :func:`synthetic_dataset`: a torch IterableDataset over shards, split across workers and DDP ranks.
- :func:`mix`: real + synthetic images as one map-style dataset, by ratio or probability.
- :func:`on_the_fly`: a torch IterableDataset drawing fresh images from a generator as training goes.
- :func:`train_generator`, :func:`run_benchmark`, :func:`evaluate_synthetic`: the CLI's stages.
"""

from synthaug.errors import SynthaugError  # noqa: E402
from synthaug.version import __version__  # noqa: E402
from synthaug.data import DataConfig, ImageSet, load_dataset  # noqa: E402

_LAZY = {
    "Generator": "synthaug.generator",
    "train_generator": "synthaug.generator.train",
    "write_shards": "synthaug.synthesis",
    "synthetic_dataset": "synthaug.torch_datasets",
    "mix": "synthaug.torch_datasets",
    "on_the_fly": "synthaug.torch_datasets",
    "run_benchmark": "synthaug.benchmark",
    "evaluate_synthetic": "synthaug.benchmark",
    "load_recipe": "synthaug.recipe",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'synthaug' has no attribute {name!r}")


__all__ = ["DataConfig", "ImageSet", "SynthaugError", "__version__", "load_dataset", *_LAZY]
