"""Memorization audit: does a generator copy its training images?

For every synthetic image: its distance to the nearest real training image of the generator (in the
Inception space FID uses, and in pixels), and which image that is. A synthetic image counts as *close*
when it is nearer to a training image than 95% of the real test images are to theirs; a generator that
does not copy makes about 5% close images (as many as held-out real images), one that copies ~100%.

A real-guided variation starts from one training image (its source), so its nearest training image is mostly that
source: for variations the audit reports how far each moved from its source, and counts as copying only closeness
to some *other* training image. Few close images can also mean images unlike the data (off the distribution),
which the audit says when their nearest-training distances are far above the real test images'.
"""

from __future__ import annotations

import numpy as np

EXPECTED_SHARE = 0.05  # the share of close images for images that are no copies (held-out real ones)
OFF_DISTRIBUTION_RATIO = 1.5  # median nearest-training distance, synthetic over real test, above which images are unlike the data


def nearest(queries: np.ndarray, references, chunk: int = 4096, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each row of ``queries`` (N, D) to its nearest row of ``references`` (M, ...; an
    array, or a memory-mapped row view read piece by piece), and that row's index. Computed in float64 pieces
    of ``chunk`` references: ``|q|^2 - 2 q.r + |r|^2``, clipped at 0, so memory stays flat in M.

    ``exclude``: (N,) a reference row each query may not match (its own source), or -1 for none."""
    from synthaug.images import chunks_of

    q = np.asarray(queries, dtype=np.float64).reshape(len(queries), -1)
    q2 = (q * q).sum(1)
    best = np.full(len(q), np.inf)
    index = np.zeros(len(q), dtype=np.int64)
    start = 0
    for block in chunks_of(references, chunk):
        r = np.asarray(block, dtype=np.float64).reshape(len(block), -1)
        d2 = q2[:, None] - 2 * q @ r.T + (r * r).sum(1)[None, :]
        if exclude is not None:
            inside = np.flatnonzero((exclude >= start) & (exclude < start + len(block)))
            d2[inside, exclude[inside] - start] = np.inf
        arg = d2.argmin(1)
        value = d2[np.arange(len(q)), arg]
        better = value < best
        best[better], index[better] = value[better], arg[better] + start
        start += len(block)
    return np.sqrt(np.maximum(best, 0)), index


def close_share(synthetic: np.ndarray, train: np.ndarray, test: np.ndarray, quantile: float = EXPECTED_SHARE,
                exclude: np.ndarray | None = None) -> dict:
    """The share of synthetic images nearer to a training image than ``1 - quantile`` of the real test images
    are (the threshold is the ``quantile`` of the test images' nearest-training distances). ``exclude``: per
    synthetic image a training row that does not count (its own source), or -1.

    Returns:
        {"share", "ci95": Wilson interval of the share, "threshold", "distance": per synthetic image,
        "nearest": index of its nearest training image, "test_distance": per test image}
    """
    d_syn, idx = nearest(synthetic, train, exclude=exclude)
    d_test, _ = nearest(test, train)
    threshold = float(np.quantile(d_test, quantile))
    close = d_syn < threshold
    return {"share": float(close.mean()), "ci95": wilson(int(close.sum()), len(close)), "threshold": threshold,
            "distance": d_syn, "nearest": idx, "test_distance": d_test}


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    """Wilson score 95% interval of a proportion k / n."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def audit(features: dict[str, np.ndarray], pixels: dict[str, np.ndarray], train_ids: list[str], syn_ids: list[str],
          pairs: int = 8, sources: np.ndarray | None = None, strengths: np.ndarray | None = None) -> dict:
    """The memorization audit of one synthetic set.

    Args:
        features: Inception features, {"synthetic": (N, 2048), "train": (M, 2048), "test": (T, 2048)}.
        pixels: the same images as uint8 pixels at the dataset's resolution, same keys and order.
        train_ids: the dataset-relative file of each training image.
        syn_ids: the key of each synthetic image.
        pairs: how many of the closest (synthetic, training) pairs to list.
        sources: per synthetic image, the training row it is a variation of, or -1 (a plain sample); None: all plain.
        strengths: per synthetic image, its variation strength (read only for variations).

    Returns:
        Per space ("inception", "pixels"): the share of images closer to any training image than the threshold,
        its interval, the threshold, the median nearest-training distance of the synthetic and of the test images,
        and the closest pairs (synthetic key, training file, distance). With variations, per space also "copying"
        (the share closer than the threshold to a training image other than the own source; the closest pairs then
        list that image) and "own_source" (distance to the own source: median, per strength, share within the
        threshold). "off_distribution" when the images are far from the data; "verdict", a sentence for the report.
    """
    n = len(syn_ids)
    sources = np.full(n, -1, dtype=np.int64) if sources is None else np.asarray(sources, dtype=np.int64)
    varied = sources >= 0
    out: dict = {"expected_share": EXPECTED_SHARE, "n_synthetic": n, "n_train": len(train_ids), "n_variations": int(varied.sum())}
    for space, values in (("inception", features), ("pixels", pixels)):
        r = close_share(values["synthetic"], values["train"], values["test"])
        entry = {"share": r["share"], "ci95": r["ci95"], "threshold": r["threshold"],
                 "median_distance": float(np.median(r["distance"])), "test_median_distance": float(np.median(r["test_distance"]))}
        if varied.any():
            other = close_share(values["synthetic"], values["train"], values["test"], exclude=sources)
            entry["copying"] = {"share": other["share"], "ci95": other["ci95"]}
            entry["median_distance"] = float(np.median(other["distance"]))  # to the data, not to the own source
            entry["own_source"] = own_source(values["synthetic"], values["train"], sources, strengths, r["threshold"])
            r = other  # the closest pairs: each variation with its nearest image other than its source
        order = np.argsort(r["distance"], kind="stable")[:pairs]
        entry["closest"] = [{"synthetic": syn_ids[i], "train": train_ids[int(r["nearest"][i])], "train_index": int(r["nearest"][i]),
                             "distance": float(r["distance"][i])} for i in order]
        out[space] = entry
    ratio = out["inception"]["median_distance"] / max(out["inception"]["test_median_distance"], 1e-12)
    if ratio > OFF_DISTRIBUTION_RATIO:
        out["off_distribution"] = {"ratio": float(ratio), "space": "inception"}
    out["verdict"] = verdict(out)
    return out


def own_source(synthetic: np.ndarray, train, sources: np.ndarray, strengths: np.ndarray | None, threshold: float) -> dict:
    """How far the variations moved from their own source: the median distance, per strength, and the share
    within ``threshold`` (what a nearest-neighbour search over all training images would call close)."""
    varied = np.flatnonzero(sources >= 0)
    unique, inverse = np.unique(sources[varied], return_inverse=True)  # each source read once, in order (a row view)
    source_values = np.asarray(train[unique], dtype=np.float64)[inverse.ravel()]
    mine = np.asarray(synthetic, dtype=np.float64)[varied]
    d = np.sqrt(((mine - source_values).reshape(len(varied), -1) ** 2).sum(1))
    out = {"n": len(varied), "median": float(np.median(d)), "within_threshold": float((d < threshold).mean())}
    if strengths is not None:
        s = np.asarray(strengths, dtype=np.float64)[varied]
        if len(np.unique(s)) > 1:
            out["by_strength"] = {f"{v:g}": float(np.median(d[s == v])) for v in np.unique(s)}
    return out


def verdict(result: dict) -> str:
    """A plain sentence from the right number: for variations the share close to a training image other than
    their own source (copying proper), for plain samples the share close to any; in both spaces."""
    variations = "copying" in result["inception"]
    number = {space: result[space]["copying"] if variations else result[space] for space in ("inception", "pixels")}
    what = ("of the variations are closer to a training image other than their own source" if variations
            else "of the synthetic images are closer to a training image")
    text = (f"{100 * number['inception']['share']:.1f}% {what} than 95% of real test images are (Inception space; "
            f"{100 * number['pixels']['share']:.1f}% in pixels; about 5% is expected of images that are not copies)")
    low = number["inception"]["ci95"][0]
    off = result.get("off_distribution")
    if low > 2 * EXPECTED_SHARE:
        text += ": the generator copies training images; treat its gains with suspicion and train it on more data or for less long."
    elif low > EXPECTED_SHARE:
        text += ": somewhat more than expected, so some images are near-copies."
    elif off:
        text += (f": few are close because the images are unlike the data (their median distance to the nearest training "
                 f"image is {off['ratio']:.1f}x that of real test images in Inception space), not because they are original; "
                 "this shows no copying, but not that the generator would not copy once it draws the data.")
    else:
        text += ": no sign of copying."
    if number["pixels"]["ci95"][0] > 2 * EXPECTED_SHARE >= low:
        text += f" In pixels more are close than chance gives, so some look like {'other ' if variations else ''}training images."
    if variations:
        own = result["inception"]["own_source"]
        by = own.get("by_strength")
        text += (f" The variations moved a median {own['median']:.1f} from their own source in Inception space"
                 + (" (" + ", ".join(f"strength {k}: {v:.1f}" for k, v in by.items()) + ")" if by else "")
                 + f", against {result['inception']['test_median_distance']:.1f} from a real test image to its nearest "
                 f"training image; {100 * own['within_threshold']:.0f}% stay within the closeness threshold of their source "
                 f"({100 * result['pixels']['own_source']['within_threshold']:.0f}% in pixels): that is by construction, not copying.")
    return text


def pairs_grid(synthetic: np.ndarray, train: np.ndarray, closest: list[dict], syn_index: dict[str, int]) -> np.ndarray:
    """A grid of the closest pairs: each column a synthetic image above its nearest training image."""
    from synthaug.grids import tile_images

    tops = [synthetic[syn_index[p["synthetic"]]] for p in closest]
    bottoms = [train[p["train_index"]] for p in closest]
    return tile_images(np.stack(tops + bottoms), max(1, len(tops)))
