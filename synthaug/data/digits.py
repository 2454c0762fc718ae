"""sklearn's bundled handwritten digits (1,797 real 8x8 grayscale images, 10 classes): no files needed."""

from __future__ import annotations

import numpy as np

from synthaug.data.catalog import Catalog


def read_digits() -> Catalog:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (N, 8, 8, 1), 0..16 -> 0..255
    return Catalog(
        format="digits",
        root=None,
        class_names=[str(d) for d in range(10)],
        class_ids=list(range(10)),
        labels=bunch.target,
        splits=np.full(len(bunch.target), ""),
        pixels=pixels,
    )
