"""One rule for every seed synthaug derives: :func:`derive_seed`."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed named by what it is for, e.g. ``derive_seed(base_seed, "c380", 17)`` for image 17 of
    class 380, or ``derive_seed("train", seed, step)`` for one training step.

    Why one hash of named parts rather than arithmetic such as ``seed * 1000 + i``: arithmetic seeds
    collide (seed 1, image 0 equals seed 0, image 1000), and they tie a draw to the order in which work
    is done. A hash of the parts gives every draw its own stream, the same whichever process, batch or
    run does the work, so an image, a training step or a classifier run can be reproduced alone.

    >>> derive_seed(0, "c3", 5) == derive_seed(0, "c3", 5) != derive_seed(1, "c3", 5)
    True
    """
    text = "/".join(["synthaug", *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def numpy_rng(*parts: object):
    """A NumPy generator seeded by :func:`derive_seed` of ``parts``."""
    import numpy as np

    return np.random.default_rng(derive_seed(*parts))
