"""t-SNE of 20,000 points: openTSNE (what `toolkit tsne` runs) vs scikit-learn's `TSNE`, in one run.

Data: scikit-learn's 1,797 real digit scans (64 pixels, 0-16), repeated to
N points with Gaussian pixel noise (sigma 1) on every copy, so the map has
the digits' real structure at a size where t-SNE's cost shows. Both run on
the same 50 principal components with the same settings: perplexity 30,
PCA initialisation, automatic learning rate, 250 early-exaggeration + 500
iterations (sklearn: max_iter=750), all cores, seed 0. openTSNE uses its
FFT-accelerated gradients (as `embed_2d` does from 10,000 points on),
scikit-learn Barnes-Hut (its default).

Quality check: 10-NN accuracy of the digit labels in each 2-D map (3-fold,
grouped by scan), so the faster map is not a worse one. The openTSNE time includes its PCA
(`embed_2d` does both); scikit-learn gets the PCA done beforehand.

    python benchmarks/bench_tsne.py [--n 20000] [--n_jobs -1]

With `--threads`, it instead times `embed_2d` (openTSNE) on 300, 2,000 and
20,000 of these points with one thread and with all cores, the two settings
taking turns, best of 3 each: the measurement behind `embed_2d`'s default
thread count.

    python benchmarks/bench_tsne.py --threads [--sizes 300 2000 20000] [--repeats 3]

With `--sample`, it times the map of more points than `--max-points`
(`embed_2d` with sampling): N synthetic points in `--dims` dimensions around
20 random cluster centres, memory-mapped from a .npy file as a feature
folder would be; the sample is embedded, the rest placed. It prints the
total, the placing alone, seconds per 100,000 placed points, and the 10-NN
accuracy of the placed points' clusters from the sampled points on the map.

    python benchmarks/bench_tsne.py --sample [--n 100000] [--dims 256] [--max_points 50000]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.maps import embedding
from image_toolkit.data_tools.maps.embedding import embed_2d, fit_pca, sample_rows


def digits_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N noisy copies of the digit scans: features, digit labels and the scan each copies."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    rows = np.resize(np.arange(len(digits.target)), n)
    noise = rng.normal(0.0, 1.0, size=(n, digits.data.shape[1]))
    return (digits.data[rows] + noise).astype(np.float32), digits.target[rows], rows


def knn_accuracy(coords: np.ndarray, labels: np.ndarray, scans: np.ndarray) -> float:
    """10-NN accuracy of the labels on the map, 3-fold, with all copies of a scan in one fold
    (else a point's nearest neighbours would be its own noisy copies)."""
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(10), coords, labels, groups=scans, cv=GroupKFold(3)).mean())


def compare_threads(sizes: list[int], repeats: int) -> None:
    """Best-of-`repeats` seconds of embed_2d at each size with n_jobs 1 and -1, taking turns."""
    print(f"t-SNE seconds (best of {repeats}, n_jobs 1 and -1 taking turns) on {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'points':>8}{'n_jobs 1':>12}{'n_jobs -1':>12}")
    for n in sizes:
        features = digits_points(n)[0]
        best = {1: float("inf"), -1: float("inf")}
        for _ in range(repeats):
            for n_jobs in best:
                started = time.perf_counter()
                embed_2d(features, method="tsne", seed=0, n_jobs=n_jobs)
                best[n_jobs] = min(best[n_jobs], time.perf_counter() - started)
        print(f"{n:>8,}{best[1]:>12.2f}{best[-1]:>12.2f}", flush=True)


def clustered_points(n: int, dims: int, folder: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N points around 20 cluster centres, written to folder/features.npy and memory-mapped; and their clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(20, dims)).astype(np.float32)
    clusters = rng.integers(0, len(centres), size=n)
    writer = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float32, shape=(n, dims))
    for start in range(0, n, 50_000):
        part = clusters[start : start + 50_000]
        writer[start : start + len(part)] = centres[part] + rng.normal(0.0, 0.6, size=(len(part), dims))
    writer.flush()
    del writer
    return np.load(folder / "features.npy", mmap_mode="r"), clusters


def time_sampling(n: int, dims: int, max_points: int, n_jobs: int | None) -> None:
    """Seconds of a sampled map, of its placing alone, and the placed points' 10-NN accuracy."""
    from sklearn.neighbors import KNeighborsClassifier

    placing = []
    place_rows = embedding.place_rows

    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = place_rows(*args, **kwargs)
        placing.append(time.perf_counter() - started)
        return result

    embedding.place_rows = timed
    with tempfile.TemporaryDirectory() as folder:
        features, clusters = clustered_points(n, dims, Path(folder))
        print(f"{n:,} points x {dims} (20 clusters, memory-mapped), --max-points {max_points:,}, n_jobs {n_jobs} "
              f"on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
        started = time.perf_counter()
        coords = embed_2d(features, seed=0, n_jobs=n_jobs, max_points=max_points)
        total = time.perf_counter() - started
    rows = sample_rows(n, max_points, seed=0)
    placed = np.setdiff1d(np.arange(n), rows)
    accuracy = KNeighborsClassifier(10).fit(coords[rows], clusters[rows]).score(coords[placed], clusters[placed])
    print(f"total {total:.1f} s: sample of {max_points:,} (PCA + t-SNE) {total - placing[0]:.1f} s, "
          f"placing {len(placed):,} {placing[0]:.1f} s ({placing[0] / len(placed) * 1e5:.1f} s per 100,000); "
          f"10-NN accuracy of the placed points {accuracy:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of points")
    parser.add_argument("--n_jobs", type=int, default=None,
                        help="threads for both (-1, the default: all cores); with --sample, embed_2d's choice by default")
    parser.add_argument("--perplexity", type=float, default=30.0)
    parser.add_argument("--threads", action="store_true", help="compare n_jobs 1 and -1 at several sizes instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 2_000, 20_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample", action="store_true", help="time a map of --n points made from --max_points of them")
    parser.add_argument("--dims", type=int, default=256, help="dimensions of the --sample points")
    parser.add_argument("--max_points", "--max-points", type=int, default=50_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.sample:
        time_sampling(args.n, args.dims, args.max_points, args.n_jobs)
        return
    if args.threads:
        compare_threads(args.sizes, args.repeats)
        return
    args.n_jobs = -1 if args.n_jobs is None else args.n_jobs
    from openTSNE import __version__ as opentsne_version
    from sklearn import __version__ as sklearn_version
    from sklearn.manifold import TSNE

    features, labels, scans = digits_points(args.n)
    print(f"{args.n:,} points (digits + noise, 64-d -> 50 PCA components), perplexity {args.perplexity:g}, "
          f"750 iterations, n_jobs {args.n_jobs} on {os.cpu_count()} CPUs")

    started = time.perf_counter()
    ours = embed_2d(features, method="tsne", perplexity=args.perplexity, seed=0, n_jobs=args.n_jobs, max_points=args.n)
    open_seconds = time.perf_counter() - started

    reduced = fit_pca(features, 50, seed=0)[1]
    started = time.perf_counter()
    theirs = TSNE(perplexity=args.perplexity, max_iter=750, init="pca", learning_rate="auto", method="barnes_hut",
                  n_jobs=args.n_jobs, random_state=0).fit_transform(reduced)
    sklearn_seconds = time.perf_counter() - started

    print(f"{'implementation':<32}{'seconds':>10}{'10-NN accuracy':>16}")
    print(f"{'openTSNE ' + opentsne_version + (' (FFT)' if args.n >= 10_000 else ' (BH)'):<32}{open_seconds:>10.1f}{knn_accuracy(ours, labels, scans):>16.3f}")
    print(f"{'scikit-learn ' + sklearn_version + ' (BH)':<32}{sklearn_seconds:>10.1f}{knn_accuracy(theirs, labels, scans):>16.3f}")
    print(f"ratio scikit-learn / openTSNE seconds: {sklearn_seconds / open_seconds:.1f}")


if __name__ == "__main__":
    main()
