"""Benchmark approximate search: the toolkit's self-tuned indexes vs hnswlib, usearch and annoy, one thread each.

    python benchmarks/bench_ann.py                          # clustered: N = 50,000, D = 512, 1,000 queries
    python benchmarks/bench_ann.py --data digits            # real features: digits' pixels, 50,000 rows
    python benchmarks/bench_ann.py --rows 10000 --repeats 2 # a couple of minutes

Needs annoy, hnswlib and usearch (`pip install 'image-toolkit[bench]'`);
a peer that is not installed is skipped with a note (`--peers` picks them).

The data (`--data`):
- `clustered`: `--clusters` random centres (standard normal in D
  dimensions) and rows at a centre plus normal noise of scale `--spread` in
  every dimension. The noise is larger than the spread of the centres, so a
  row's nearest neighbours are in its cluster but not obviously so.
- `digits`: real features, the 64 pixels (0 to 16) of all 1,797 scikit-learn
  digits, repeated to N rows with normal noise of scale `--noise` on every
  pixel. Gaussian clusters flatter IVF; these do not.
The queries are further rows drawn the same way and not indexed, like new
images. Metric: cosine (annoy's angular distance ranks the same way).

Truth: the exact 10 nearest rows (toolkit's exact_neighbors). Recall@10: the
share of those found. The toolkit's index tunes itself to --target
(on held-out indexed rows) while building; its build time includes that.
Each peer's search parameter (annoy search_k, hnswlib ef, usearch
expansion_search) is swept upwards and its first setting reaching the target
on the queries is kept (tuned on the very queries it is measured on, which
favours the peers). QPS: queries per second, one query per call (the web
app's case) and all queries in one call (`toolkit search --features`), best
of --repeats passes, methods taking turns so that load from elsewhere falls
on all of them. annoy has no batch call. Index size: the files on disk.

Per-call overhead: for each toolkit kind, microseconds per one-query call of
`ImageIndex.search` against faiss's own `index.search` on the same index and
the same (already normalised) query, best of --repeats passes (at least 5).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEARCH_K = (1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000, 60_000, 80_000, 120_000)
EF = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 192, 256, 384, 512, 768, 1024)


def clustered(n: int, dim: int, *, clusters: int, spread: float, seed: int) -> np.ndarray:
    """Rows around `clusters` normal centres, with normal noise of scale `spread` in every dimension."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    rows *= spread
    rows += centres[rng.integers(0, clusters, n)]
    return rows


def digits(n: int, *, noise: float, seed: int) -> np.ndarray:
    """The 1,797 digits' 64 pixels, repeated in a random order to `n` rows, plus normal noise of scale `noise`."""
    from sklearn.datasets import load_digits

    pixels = load_digits().data.astype(np.float32)
    rng = np.random.default_rng(seed)
    rows = pixels[rng.permutation(np.resize(np.arange(len(pixels)), n))]
    return rows + noise * rng.standard_normal(rows.shape, dtype=np.float32)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found.tolist(), truth.tolist())]))


def folder_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.iterdir()) if path.is_dir() else path.stat().st_size


class Toolkit:
    """The toolkit's ImageIndex of one kind, built with one thread and tuned to the target on held-out rows."""

    batched = True

    def __init__(self, kind: str, rows: np.ndarray, target: float, folder: Path, **options):
        from image_toolkit.data_tools.formats.features import FeatureSet
        from image_toolkit.data_tools.search.index import ImageIndex

        shown = "".join(f" {key}={value}" for key, value in options.items())
        self.name = f"toolkit {kind}{shown}"
        started = time.perf_counter()
        self.index = ImageIndex(kind=kind, target_recall=target, n_threads=1, **options).fit(
            FeatureSet([str(i) for i in range(len(rows))], rows, {})
        )
        self.build_seconds = time.perf_counter() - started
        self.index.save(folder / self.name.replace(" ", "_"))
        self.bytes = folder_bytes(folder / self.name.replace(" ", "_"))
        self.rows_of = np.array([int(path) for path in self.index.paths_])  # Index order -> row number.
        params = {key: value for key, value in self.index.params_.items() if key not in ("efSearch", "nprobe")}
        tuning = self.index.tuning_
        self.setting = ",".join([f"{key}={value}" for key, value in params.items()]
                                + ([f"{tuning['parameter']}={tuning['value']}"] if tuning.get("parameter") else []))
        self.note = f"recall {tuning.get('recall', 1):.3f} on held-out indexed rows"

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.rows_of[self.index.search(queries, k=k)[1]]

    def one_by_one(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.rows_of[np.concatenate([self.index.search(query[None], k=k)[1] for query in queries])]

    def overhead(self, queries: np.ndarray, k: int, repeats: int) -> tuple[float, float]:
        """Microseconds per one-query call: (faiss's index.search, ImageIndex.search), best of `repeats`."""
        import faiss

        unit = np.array(queries, dtype=np.float32)
        faiss.normalize_L2(unit)
        raw, ours = float("inf"), float("inf")
        for _ in range(max(repeats, 5)):  # Taking turns, at least 5 times: the difference is small and load is not.
            started = time.perf_counter()
            for i in range(len(unit)):
                self.index.index_.search(unit[i : i + 1], k)
            raw = min(raw, time.perf_counter() - started)
            started = time.perf_counter()
            for i in range(len(queries)):
                self.index.search(queries[i : i + 1], k=k)
            ours = min(ours, time.perf_counter() - started)
        return raw / len(queries) * 1e6, ours / len(queries) * 1e6


class Peer:
    """A peer library's index; `sweep` raises its search parameter until recall on the queries reaches the target."""

    batched = True
    grid: tuple[int, ...] = EF
    parameter = "ef"

    def set(self, value: int) -> None:
        raise NotImplementedError

    def sweep(self, queries: np.ndarray, truth: np.ndarray, target: float) -> None:
        for value in self.grid:
            self.set(value)
            recall = recall_at(self.batch(queries, truth.shape[1]), truth)
            print(f"  {self.name} {self.parameter}={value:,}: recall@{truth.shape[1]} {recall:.3f}", flush=True)
            if recall >= target:
                break
        self.setting = f"{self.parameter}={value:,}"
        self.note = "" if recall >= target else f"below the target at the largest {self.parameter}"

    def one_by_one(self, queries: np.ndarray, k: int) -> np.ndarray:
        return np.concatenate([self.batch(query[None], k) for query in queries])


class Annoy(Peer):
    """annoy's angular index with `trees` trees, built with one thread."""

    batched = False
    grid = SEARCH_K
    parameter = "search_k"

    def __init__(self, rows: np.ndarray, folder: Path, *, trees: int):
        from annoy import AnnoyIndex

        self.name = f"annoy {trees} trees"
        started = time.perf_counter()
        index = AnnoyIndex(rows.shape[1], "angular")
        for i, row in enumerate(rows):
            index.add_item(i, row)
        index.build(trees, n_jobs=1)
        self.build_seconds = time.perf_counter() - started
        index.save(str(folder / "annoy.ann"))
        self.bytes = folder_bytes(folder / "annoy.ann")
        self.index, self.search_k = index, None

    def set(self, value: int) -> None:
        self.search_k = value

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return np.array([self.index.get_nns_by_vector(query, k, search_k=self.search_k) for query in queries])


class Hnswlib(Peer):
    """hnswlib's cosine HNSW (M, ef_construction), built and searched with one thread."""

    def __init__(self, rows: np.ndarray, folder: Path, *, m: int, ef_construction: int):
        import hnswlib

        self.name = f"hnswlib M={m} efC={ef_construction}"
        started = time.perf_counter()
        index = hnswlib.Index(space="cosine", dim=rows.shape[1])
        index.init_index(max_elements=len(rows), M=m, ef_construction=ef_construction, random_seed=0)
        index.set_num_threads(1)
        index.add_items(rows, np.arange(len(rows)), num_threads=1)
        self.build_seconds = time.perf_counter() - started
        index.save_index(str(folder / "hnswlib.bin"))
        self.bytes = folder_bytes(folder / "hnswlib.bin")
        self.index = index

    def set(self, value: int) -> None:
        self.index.set_ef(value)

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(queries, k=k, num_threads=1)[0].astype(np.int64)


class Usearch(Peer):
    """usearch's cosine HNSW (connectivity, expansion_add), f32, built and searched with one thread."""

    parameter = "expansion_search"

    def __init__(self, rows: np.ndarray, folder: Path, *, m: int, ef_construction: int):
        from usearch.index import Index

        self.name = f"usearch M={m} efC={ef_construction}"
        started = time.perf_counter()
        index = Index(ndim=rows.shape[1], metric="cos", dtype="f32", connectivity=m, expansion_add=ef_construction)
        index.add(np.arange(len(rows)), rows, threads=1)
        self.build_seconds = time.perf_counter() - started
        index.save(str(folder / "usearch.bin"))
        self.bytes = folder_bytes(folder / "usearch.bin")
        self.index = index

    def set(self, value: int) -> None:
        self.index.expansion_search = value

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return np.atleast_2d(self.index.search(queries, k, threads=1).keys).astype(np.int64)


PEERS = {"annoy": ("annoy", Annoy), "hnswlib": ("hnswlib", Hnswlib), "usearch": ("usearch", Usearch)}


def toolkit_options(spec: str) -> tuple[str, dict]:
    """'hnsw' or 'hnsw:m=16:ef_construction=100' -> ('hnsw', {'m': 16, 'ef_construction': 100})."""
    kind, *pairs = spec.split(":")
    return kind, {key: int(value) for key, value in (pair.split("=") for pair in pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("clustered", "digits"), default="clustered", help="synthetic clusters or real digits pixels")
    parser.add_argument("--rows", "--n", type=int, default=50_000, help="indexed rows (images)")
    parser.add_argument("--dim", type=int, default=512, help="clustered: features per row (digits have 64)")
    parser.add_argument("--clusters", type=int, default=1_000, help="clustered: number of centres")
    parser.add_argument("--spread", type=float, default=1.5, help="clustered: noise scale around a centre (centres have scale 1)")
    parser.add_argument("--noise", type=float, default=1.0, help="digits: noise scale on pixels of 0 to 16")
    parser.add_argument("--queries", type=int, default=1_000, help="query rows, not indexed")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.95, help="recall@k to reach")
    parser.add_argument("--kinds", default="ivf,hnsw,ivfpq",
                        help="toolkit kinds, comma-separated, each optionally with options: hnsw:m=16:ef_construction=100")
    parser.add_argument("--peers", default="hnswlib,usearch,annoy", help="peer libraries, comma-separated")
    parser.add_argument("--peer-m", type=int, default=16, help="hnswlib and usearch: M (connectivity)")
    parser.add_argument("--peer-ef-construction", type=int, default=100, help="hnswlib and usearch: ef_construction")
    parser.add_argument("--trees", type=int, default=50, help="annoy trees")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import faiss

    faiss.omp_set_num_threads(1)
    from image_toolkit.data_tools.search.neighbors import exact_neighbors, thread_limit

    n = args.rows + args.queries
    if args.data == "digits":
        data = digits(n, noise=args.noise, seed=args.seed)
        shape = f"digits pixels + noise {args.noise}"
    else:
        data = clustered(n, args.dim, clusters=args.clusters, spread=args.spread, seed=args.seed)
        shape = f"clustered ({args.clusters} clusters, spread {args.spread})"
    rows, queries = data[: args.rows], data[args.rows :]
    print(f"{shape}: N={args.rows:,} D={rows.shape[1]} queries={args.queries:,} k={args.k} "
          f"target recall@{args.k}={args.target} metric=cosine seed={args.seed}; one thread; faiss {faiss.__version__}",
          flush=True)
    truth = exact_neighbors(rows, k=args.k, metric="cosine", queries=queries)[1]

    methods, overheads = [], {}
    with tempfile.TemporaryDirectory() as temporary, thread_limit(1):
        folder = Path(temporary)
        for spec in filter(None, args.kinds.split(",")):
            kind, options = toolkit_options(spec)
            method = Toolkit(kind, rows, args.target, folder, **options)
            print(f"{method.name}: built and tuned in {method.build_seconds:.1f} s, {method.bytes / 2**20:.1f} MB; "
                  f"{method.setting} ({method.note})", flush=True)
            methods.append(method)
        for peer in filter(None, args.peers.split(",")):
            module, cls = PEERS[peer]
            if importlib.util.find_spec(module) is None:
                print(f"{peer}: not installed, skipped (pip install {module})", flush=True)
                continue
            options = {"trees": args.trees} if peer == "annoy" else {"m": args.peer_m, "ef_construction": args.peer_ef_construction}
            method = cls(rows, folder, **options)
            print(f"{method.name}: built in {method.build_seconds:.1f} s, {method.bytes / 2**20:.1f} MB; sweeping:", flush=True)
            method.sweep(queries, truth, args.target)
            methods.append(method)

        # Timed passes, methods taking turns.
        timed = []
        for method in methods:
            timed.append((method, "1/call", lambda m=method: m.one_by_one(queries, args.k)))
            if method.batched:
                timed.append((method, "batch", lambda m=method: m.batch(queries, args.k)))
        best = {}
        for _ in range(args.repeats):
            for method, mode, work in timed:
                started = time.perf_counter()
                work()
                best[method.name, mode] = min(best.get((method.name, mode), float("inf")), time.perf_counter() - started)
        recalls = {(method.name, mode): recall_at(work(), truth) for method, mode, work in timed}
        for method in methods:
            if isinstance(method, Toolkit):
                overheads[method.name] = method.overhead(queries, args.k, args.repeats)

    qps = {key: args.queries / seconds for key, seconds in best.items()}
    reference = {mode: qps.get((name, mode)) for name, mode in qps if name.startswith("hnswlib")}
    annoy = next((qps[key] for key in qps if key[0].startswith("annoy")), None)
    print()
    print(f"{'method':34s} {'setting':>34s} {'recall@10':>9s} {'QPS 1/call':>10s} {'QPS batch':>10s} "
          f"{'vs hnswlib':>10s} {'vs annoy':>8s} {'build s':>8s} {'size MB':>8s}")
    for method in methods:
        one = qps[method.name, "1/call"]
        batch = qps.get((method.name, "batch"))
        recall = min(recalls[method.name, mode] for mode in ("1/call", "batch") if (method.name, mode) in recalls)
        versus = f"{one / reference['1/call']:9.2f}x" if reference.get("1/call") else f"{'-':>10s}"
        versus_annoy = f"{one / annoy:7.1f}x" if annoy else f"{'-':>8s}"
        below = "  below the target" if recall < args.target else ""
        print(f"{method.name:34s} {method.setting:>34s} {recall:9.3f} {one:10,.0f} "
              f"{f'{batch:,.0f}' if batch else '-':>10s} {versus} {versus_annoy} {method.build_seconds:8.1f} "
              f"{method.bytes / 2**20:8.1f}{below}")
    print("QPS ratios are one query per call.")
    for name, (raw, ours) in overheads.items():
        print(f"{name}: one-query call {ours:.1f} us through ImageIndex.search, {raw:.1f} us through faiss's index.search "
              f"(overhead {ours - raw:.1f} us, {ours / raw - 1:+.0%})")
    print(f"load average over the last minute: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(above 1 means other processes shared the machine; the methods took turns)")


if __name__ == "__main__":
    main()
