"""Memorization audit: does a generator copy its training images?

For every synthetic image: its distance to the nearest real training image of the generator (in the
Inception space FID uses, and in pixels), and which image that is. A synthetic image counts as *close*
when it is nearer to a training image than 95% of the real test images are to theirs; a generator that
does not copy makes about 5% close images (as many as held-out real images), one that copies ~100%.
"""

from __future__ import annotations

import numpy as np

EXPECTED_SHARE = 0.05  # the share of close images for images that are no copies (held-out real ones)


def nearest(queries: np.ndarray, references, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each row of ``queries`` (N, D) to its nearest row of ``references`` (M, ...; an
    array, or a memory-mapped row view read piece by piece), and that row's index. Computed in float64 pieces
    of ``chunk`` references: ``|q|^2 - 2 q.r + |r|^2``, clipped at 0, so memory stays flat in M."""
    from synthaug.images import chunks_of

    q = np.asarray(queries, dtype=np.float64).reshape(len(queries), -1)
    q2 = (q * q).sum(1)
    best = np.full(len(q), np.inf)
    index = np.zeros(len(q), dtype=np.int64)
    start = 0
    for block in chunks_of(references, chunk):
        r = np.asarray(block, dtype=np.float64).reshape(len(block), -1)
        d2 = q2[:, None] - 2 * q @ r.T + (r * r).sum(1)[None, :]
        arg = d2.argmin(1)
        value = d2[np.arange(len(q)), arg]
        better = value < best
        best[better], index[better] = value[better], arg[better] + start
        start += len(block)
    return np.sqrt(np.maximum(best, 0)), index


def close_share(synthetic: np.ndarray, train: np.ndarray, test: np.ndarray, quantile: float = EXPECTED_SHARE) -> dict:
    """The share of synthetic images nearer to a training image than ``1 - quantile`` of the real test images
    are (the threshold is the ``quantile`` of the test images' nearest-training distances).

    Returns:
        {"share", "ci95": Wilson interval of the share, "threshold", "distance": per synthetic image,
        "nearest": index of its nearest training image}
    """
    d_syn, idx = nearest(synthetic, train)
    d_test, _ = nearest(test, train)
    threshold = float(np.quantile(d_test, quantile))
    close = d_syn < threshold
    return {"share": float(close.mean()), "ci95": wilson(int(close.sum()), len(close)), "threshold": threshold,
            "distance": d_syn, "nearest": idx}


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    """Wilson score 95% interval of a proportion k / n."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def audit(features: dict[str, np.ndarray], pixels: dict[str, np.ndarray], train_ids: list[str], syn_ids: list[str],
          pairs: int = 8) -> dict:
    """The memorization audit of one synthetic set.

    Args:
        features: Inception features, {"synthetic": (N, 2048), "train": (M, 2048), "test": (T, 2048)}.
        pixels: the same images as uint8 pixels at the dataset's resolution, same keys and order.
        train_ids: the dataset-relative file of each training image.
        syn_ids: the key of each synthetic image.
        pairs: how many of the closest (synthetic, training) pairs to list.

    Returns:
        Per space ("inception", "pixels"): the close share with its interval and threshold, and the closest
        pairs (synthetic key, training file, distance); plus "verdict", a sentence for the report.
    """
    out: dict = {"expected_share": EXPECTED_SHARE, "n_synthetic": len(syn_ids), "n_train": len(train_ids)}
    for space, values in (("inception", features), ("pixels", pixels)):
        r = close_share(values["synthetic"], values["train"], values["test"])
        order = np.argsort(r["distance"], kind="stable")[:pairs]
        out[space] = {"share": r["share"], "ci95": r["ci95"], "threshold": r["threshold"],
                      "closest": [{"synthetic": syn_ids[i], "train": train_ids[int(r["nearest"][i])],
                                   "train_index": int(r["nearest"][i]), "distance": float(r["distance"][i])} for i in order]}
    out["verdict"] = verdict(out)
    return out


def verdict(result: dict) -> str:
    """A plain sentence: whether the share of close images is above what non-copies give."""
    share, low = result["inception"]["share"], result["inception"]["ci95"][0]
    text = (f"{100 * share:.1f}% of the synthetic images are closer to a training image than 95% of real test images are "
            f"(Inception space; {100 * result['pixels']['share']:.1f}% in pixels; about 5% is expected of images that are not copies)")
    if low > 2 * EXPECTED_SHARE:
        return text + ": the generator copies training images; treat its gains with suspicion and train it on more data or for less long."
    if low > EXPECTED_SHARE:
        return text + ": somewhat more than expected, so some images are near-copies."
    return text + ": no sign of copying."


def pairs_grid(synthetic: np.ndarray, train: np.ndarray, closest: list[dict], syn_index: dict[str, int]) -> np.ndarray:
    """A grid of the closest pairs: each column a synthetic image above its nearest training image."""
    from synthaug.grids import tile_images

    tops = [synthetic[syn_index[p["synthetic"]]] for p in closest]
    bottoms = [train[p["train_index"]] for p in closest]
    return tile_images(np.stack(tops + bottoms), max(1, len(tops)))
