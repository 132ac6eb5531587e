"""Benchmark exact all-against-all cosine neighbours: the toolkit vs scikit-learn vs faiss.

    python benchmarks/bench_knn.py                 # N = 20,000, D = 2,048, k = 50
    python benchmarks/bench_knn.py --n 4000 --dim 512
    python benchmarks/bench_knn.py --n 10000 --dim 512 --methods toolkit \
        --baseline old_neighbors.py     # this version against another one of neighbors.py

The features are clustered and non-negative, like pooled CNN activations.
Each method runs in its own worker process on the same generated data, so
each peak RSS (resource.getrusage) is that method's own; the methods take
turns, --repeats times, and each one's best time counts, so that load from
elsewhere does not fall on one method only. All methods must find the same
neighbours: positions where they differ must be ties, equal distances
within --tolerance. `--baseline FILE` adds another version of
`data_tools/search/neighbors.py` (say `git show HEAD~1:data_tools/search/neighbors.py`)
as one more method, "baseline", to time a change against what it replaces.

The GEMM limit is the time the full product (2 * N^2 * D flops) takes at the
float32 matmul speed numpy reaches on this machine; a share above 100% is
possible only by skipping work, as the symmetric search does.

Where OPENBLAS_CORETYPE is set to work around old OpenBLAS builds, it also
slows a current numpy; to measure without it, run this command alone with
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`. The BLAS kernels in use are
printed first.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def clustered_features(n: int, dim: int, *, clusters: int, seed: int) -> np.ndarray:
    """Non-negative rows around `clusters` sparse centres, as ReLU-pooled CNN features are."""
    rng = np.random.default_rng(seed)
    centres = np.maximum(rng.standard_normal((clusters, dim), dtype=np.float32), 0)
    features = rng.standard_normal((n, dim), dtype=np.float32)
    features *= 0.5
    features += centres[rng.integers(0, clusters, n)]
    return np.maximum(features, 0, out=features)


def ours(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from image_toolkit.data_tools.search.neighbors import exact_neighbors

    return exact_neighbors(features, k=k, metric="cosine", n_threads=-1)


def scikit_learn(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine", n_jobs=-1)
    return search.fit(features).kneighbors()


def faiss_flat(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    faiss.omp_set_num_threads(multiprocessing.cpu_count())
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    similarities, indices = index.search(unit, k + 1)
    # Drop each row itself, wherever ties placed it among its k + 1.
    keep = indices != np.arange(len(unit))[:, None]
    keep[keep.sum(axis=1) > k, -1] = False
    return (1 - similarities[keep]).reshape(-1, k), indices[keep].reshape(-1, k)


def baseline(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The toolkit's search as the --baseline file writes it (loaded by make_features)."""
    return _baseline.exact_neighbors(features, k=k, metric="cosine", n_threads=-1)


METHODS = {"toolkit": ours, "scikit-learn": scikit_learn, "faiss IndexFlatIP": faiss_flat, "baseline": baseline}


# The features of the method a worker process runs, made once per process, and the --baseline file.
_features: np.ndarray | None = None
_baseline = None


def make_features(n: int, dim: int, clusters: int, seed: int, baseline_file: str | None = None) -> None:
    global _features, _baseline
    _features = clustered_features(n, dim, clusters=clusters, seed=seed)
    if baseline_file is not None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("baseline_neighbors", baseline_file)
        _baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_baseline)


def timed_run(method: str, k: int) -> float:
    """Seconds one run of the method takes, in its worker process."""
    started = time.perf_counter()
    METHODS[method](_features, k)
    return time.perf_counter() - started


def last_run(method: str, k: int) -> tuple[float, np.ndarray, np.ndarray]:
    """The worker's peak RSS in MB, and the method's distances and indices."""
    distances, indices = METHODS[method](_features, k)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak_mb, np.asarray(distances, dtype=np.float32), np.asarray(indices, dtype=np.int64)


def sgemm_gflops(dim: int, size: int = 4096, repeats: int = 3) -> float:
    """Best float32 matmul speed numpy reaches here, in GFLOP/s."""
    rng = np.random.default_rng(0)
    left = rng.random((size, dim), dtype=np.float32)
    right = rng.random((dim, size), dtype=np.float32)
    left @ right
    best = min(_seconds(lambda: left @ right) for _ in range(repeats))
    return 2 * size * size * dim / best / 1e9


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def agreement(reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray], tolerance: float) -> str:
    """How many neighbours are identical, and whether every difference is a tie."""
    (distances, indices), (other_distances, other_indices) = reference, other
    same = indices == other_indices
    ties_only = np.abs(distances - other_distances).max() <= tolerance
    verdict = "all differences are ties" if ties_only else "NOT ONLY TIES: results differ"
    return f"{same.mean():.4%} identical ({(~same).sum()} differ; {verdict})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="rows (images)")
    parser.add_argument("--dim", type=int, default=2_048, help="features per row")
    parser.add_argument("--k", type=int, default=50, help="neighbours per row")
    parser.add_argument("--clusters", type=int, default=200, help="clusters in the generated data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-6, help="distances this close are ties")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the best counts")
    others = [method for method in METHODS if method != "baseline"]
    parser.add_argument("--methods", nargs="+", choices=others, default=others, help="methods to run (toolkit always does)")
    parser.add_argument("--baseline", type=Path, help="another neighbors.py to time as method 'baseline'")
    args = parser.parse_args()
    methods = ["toolkit", *(m for m in args.methods if m != "toolkit")] + (["baseline"] if args.baseline else [])
    baseline_file = str(args.baseline.resolve()) if args.baseline else None

    import faiss  # noqa: F401  (loaded for its BLAS to be listed)
    from threadpoolctl import threadpool_info

    kernels = ", ".join(f"{pool['prefix']} {pool.get('architecture', '')}".strip() for pool in threadpool_info())
    gflops = sgemm_gflops(args.dim)
    print(f"N={args.n:,} D={args.dim:,} k={args.k} cosine, {multiprocessing.cpu_count()} cores; {kernels}")

    # One worker process per method, so that each peak RSS is the method's own; runs take turns,
    # so that a burst of load from elsewhere does not fall on one method only; the best time counts.
    spawn = multiprocessing.get_context("spawn")
    workers = {method: concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) for method in methods}
    for worker in workers.values():
        worker.submit(make_features, args.n, args.dim, args.clusters, args.seed, baseline_file).result()
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(args.repeats):
        for method, worker in workers.items():
            best[method] = min(best[method], worker.submit(timed_run, method, args.k).result())
        gflops = max(gflops, sgemm_gflops(args.dim))
    results = {}
    for method, worker in workers.items():
        peak_mb, *found = worker.submit(last_run, method, args.k).result()
        results[method] = (best[method], peak_mb, *found)
        worker.shutdown()

    limit = 2 * args.n**2 * args.dim / (gflops * 1e9)
    print(f"numpy sgemm: {gflops:.0f} GFLOP/s, so the full product 2*N^2*D takes {limit:.2f} s (the GEMM limit)")
    for method, (seconds, peak_mb, *_) in results.items():
        print(f"{method:18s} {seconds:7.2f} s  {limit / seconds:6.0%} of the GEMM limit  peak RSS {peak_mb:6.0f} MB")

    toolkit_seconds, _, *toolkit_found = results["toolkit"]
    for method in methods[1:]:
        seconds, _, *found = results[method]
        print(
            f"toolkit vs {method}: {seconds / toolkit_seconds:.2f}x faster; neighbours "
            + agreement(toolkit_found, found, args.tolerance)
        )


if __name__ == "__main__":
    main()
