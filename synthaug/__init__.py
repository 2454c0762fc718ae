"""synthaug: synthetic training data for image classifiers, with honest numbers on whether it helps."""

__version__ = "0.1.0"

from synthaug.errors import SynthaugError  # noqa: E402
from synthaug.data import DataConfig, ImageSet, load_dataset  # noqa: E402

__all__ = ["DataConfig", "ImageSet", "SynthaugError", "__version__", "load_dataset"]
