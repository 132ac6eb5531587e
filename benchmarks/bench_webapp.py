"""Benchmark `toolkit serve` at 200,000 and 1,000,000 images: request latency, peak memory and the map, against the goals.

    python benchmarks/bench_webapp.py                      # N = 200,000 and 1,000,000 x D = 256: about 10 min on 2 cores
    python benchmarks/bench_webapp.py --sizes 2000 --requests 20   # seconds (tests/test_bench_webapp.py)
    python benchmarks/bench_webapp.py --sizes 1000000 --workdir /tmp/webbench   # keep the files; a rerun reuses them

The data, for each N (`--sizes`): synthetic clustered features (bench_scale's
generator: `--clusters` standard normal centres, rows at a centre plus normal
noise of scale `--spread`) written as a feature folder, and what a user
serves beside it:
- an ivf index built by `toolkit index build` (the default kind);
- class scores (N x clusters; `--scores`): a softmax of each row's products
  with the centres, so a keyword names a cluster;
- a label CSV (`--data-csv`), each image labelled with its cluster, for the
  feedback store (a fresh store each run: its start-up registers N images);
- a `--map` CSV: each cluster's point on a circle plus normal noise;
- the image folder: every indexed name a hard link to one tiny PNG of its folder.
The cluster of a row is read back from the generator itself (its rows at
noise 0 are the centres), never guessed from the features.

The server is `toolkit serve ... --quiet` in its own process on a free port
of 127.0.0.1. Measured: its start-up (launch to the first answer of
/api/info), then p50 / p95 latency of keyword (`/api/search?q=CLASS`),
image-vector (refine with `{"query": {"vector": ...}}`: a random row plus
noise) and refine (`{"query": {"id": i}}` with 5 selected and 3 deselected
ids) requests, kinds taking turns, first from one client, then from
`--clients` threads at once, each with its own keep-alive connection
(`http.client`); after a few warm-up requests of each kind. Then
`/api/map` for all N points, fetched and decoded with numpy, `--map-tries`
times; last the server's peak RSS (VmHWM in /proc/PID/status).

Goals (the issue's, on 2 cores): p95 <= 100 ms for one client at 1M;
peak RSS <= feature bytes + 1 GB; the map of 1M points <= 2 s. Baselines,
timed in this process on the same features once the server has stopped:
what the original project did per query (normalise the N x D features,
one product, sort all N scores), and the hardware limit of an exhaustive
search (one pass over N x D float32: `features @ vector`, at this
machine's memory bandwidth). Each is printed against the server's p50.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_feedback_load import HOST, free_port  # noqa: E402
from bench_scale import BLOCK, clustered_block, toolkit  # noqa: E402
from bench_scale import run as run_stage  # noqa: E402

CLASSES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
KINDS = ("keyword", "vector", "refine")
SELECTED, DESELECTED = 5, 3
WARM_UP = 5
P95_GOAL_MS, GOAL_N = 100, 1_000_000
MAP_GOAL_S = 2
SPARE_BYTES = 2**30
MAP_RADIUS, MAP_NOISE = 10.0, 1.5
FOLDER_IMAGES = 1000


def image_name(row: int) -> str:
    """Indexed name of a row: folders of FOLDER_IMAGES images, as a photo collection is laid out."""
    return f"{row // FOLDER_IMAGES:04d}/{row:07d}.png"


def cluster_of(start: int, rows: int, centres: np.ndarray, data: dict) -> np.ndarray:
    """The cluster of each row of a block, read from the generator: at noise 0 its rows are their centres."""
    exact = clustered_block(start, rows, data["dim"], clusters=data["clusters"], spread=0.0, seed=data["seed"])
    order = np.argsort(centres[:, 0])
    return order[np.searchsorted(centres[order, 0], exact[:, 0])]


def prepare(folder: Path, data: dict) -> dict:
    """Write the features, scores, labels, map, image folder and index of one size; reused when already there."""
    from PIL import Image

    from image_toolkit.data_tools.formats.features import write_feature_blocks

    done = folder / "prepared.json"
    if done.is_file() and json.loads(done.read_text()).get("data") == data:
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    n, dim, clusters = data["n"], data["dim"], data["clusters"]
    if clusters > len(CLASSES):
        sys.exit(f"--clusters {clusters}: at most {len(CLASSES)} (one class name each).")
    generate = dict(clusters=clusters, spread=data["spread"], seed=data["seed"])
    paths = [image_name(i) for i in range(n)]
    starts = range(0, n, BLOCK)
    started = time.perf_counter()
    # Every cluster appears in the first block; its distinct rows at noise 0 are the centres.
    centres = np.unique(clustered_block(0, min(BLOCK, n), dim, **{**generate, "spread": 0.0}), axis=0)
    if len(centres) != clusters:
        sys.exit(f"N={n}: the first {min(BLOCK, n)} rows hold {len(centres)} of the {clusters} clusters; use a larger N.")
    angles = 2 * np.pi * np.arange(clusters) / clusters
    places = MAP_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def feature_rows():
        for start in starts:
            yield clustered_block(start, min(BLOCK, n - start), dim, **generate)

    def score_rows(labels, coords):
        """Scores block by block, writing the label and map CSV lines of the same rows as it goes."""
        rng = np.random.default_rng([data["seed"], 2])
        for start in starts:
            rows = min(BLOCK, n - start)
            block = clustered_block(start, rows, dim, **generate)
            logits = block @ centres.T / np.sqrt(dim)
            logits -= logits.max(axis=1, keepdims=True)
            scores = np.exp(logits)
            scores /= scores.sum(axis=1, keepdims=True)
            cluster = cluster_of(start, rows, centres, data)
            xy = places[cluster] + rng.normal(scale=MAP_NOISE, size=(rows, 2))
            names = paths[start : start + rows]
            labels.writelines(f"{name},{CLASSES[c]}\n" for name, c in zip(names, cluster.tolist()))
            coords.writelines(f"{name},{x:.4f},{y:.4f}\n" for name, (x, y) in zip(names, xy.tolist()))
            yield scores.astype(np.float32)

    metadata = {"model": "synthetic", "layer": "clustered"}
    write_feature_blocks(folder / "features.feat", paths, feature_rows(), dim=dim, metadata=metadata, show=False)
    with (folder / "labels.csv").open("w") as labels, (folder / "map.csv").open("w") as coords:
        labels.write("image,label\n")
        coords.write("image,x,y\n")
        write_feature_blocks(folder / "scores.npz", paths, score_rows(labels, coords), dim=clusters, show=False,
                             metadata={"model": "synthetic", "output": "scores", "class_names": list(CLASSES[:clusters])})
    images = folder / "images"
    for start in range(0, n, FOLDER_IMAGES):  # A file's links are limited (65,000 on ext4): one 8 x 8 PNG a folder.
        first = images / image_name(start)
        first.parent.mkdir(parents=True)
        Image.new("L", (8, 8), 128).save(first)
        for row in range(start + 1, min(start + FOLDER_IMAGES, n)):
            os.link(first, images / image_name(row))
    written = time.perf_counter() - started
    seconds, peak, out = run_stage(toolkit("index", "build", str(folder / "features.feat"), str(folder / "index"),
                                           "--overwrite", "--json", "--quiet"))
    tuning = json.loads(out).get("tuning", {})
    prepared = {"data": data, "write_s": round(written, 1), "index_build_s": round(seconds, 1),
                "index_build_peak_mb": round(peak), "index_tuning": tuning}
    done.write_text(json.dumps(prepared))
    return prepared


class Client:
    """One keep-alive HTTP connection to the server; `send` answers (seconds, headers, body) or stops the benchmark."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection(HOST, port, timeout=120)

    def send(self, method: str, path: str, body: dict | None = None) -> tuple[float, http.client.HTTPMessage, bytes]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        started = time.perf_counter()
        self.connection.request(method, path, body=payload, headers=headers)
        response = self.connection.getresponse()
        content = response.read()
        seconds = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {content[:300].decode(errors='replace')}")
        return seconds, response.headers, content

    def close(self) -> None:
        self.connection.close()


class Requests:
    """The requests of each kind, drawn from the data: a keyword, a feature row plus noise, a refine of ids."""

    def __init__(self, features: np.ndarray, clusters: int, spread: float, seed: int):
        self.features, self.classes, self.spread = features, CLASSES[:clusters], spread
        self.rng = np.random.default_rng([seed, 3])

    def make(self, kind: str) -> tuple[str, str, dict | None]:
        n = len(self.features)
        if kind == "keyword":
            return "GET", f"/api/search?q={self.rng.choice(self.classes)}", None
        if kind == "vector":
            row = self.features[int(self.rng.integers(n))]
            vector = row + self.rng.normal(scale=0.1 * self.spread, size=row.shape)
            return "POST", "/api/search/refine", {"query": {"vector": [round(float(v), 5) for v in vector]}}
        ids = self.rng.choice(n, size=1 + SELECTED + DESELECTED, replace=False).tolist()
        return "POST", "/api/search/refine", {"query": {"id": ids[0]}, "selected": ids[1 : 1 + SELECTED],
                                              "deselected": ids[1 + SELECTED :]}

    def rounds(self, count: int) -> list[tuple[str, tuple]]:
        """`count` rounds of every kind, the kinds taking turns (each round starts one kind later)."""
        return [(kind, self.make(kind)) for i in range(count) for kind in KINDS[i % 3:] + KINDS[: i % 3]]


def percentiles(seconds: list[float]) -> dict:
    p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "requests": len(seconds)}


def measure_latency(port: int, requests: Requests, count: int, clients: int) -> dict:
    """p50 / p95 of each kind: `count` rounds from one client, then `count` rounds split over `clients` threads."""
    warm = Client(port)
    for _, request in requests.rounds(WARM_UP):
        warm.send(*request)
    single: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for kind, request in requests.rounds(count):
        single[kind].append(warm.send(*request)[0])
    warm.close()
    work = [requests.rounds(max(1, count // clients)) for _ in range(clients)]
    together: dict[str, list[float]] = {kind: [] for kind in KINDS}
    lock, failures, gate = threading.Lock(), [], threading.Barrier(clients + 1)

    def client(rounds: list) -> None:
        mine, connection = [], Client(port)
        try:
            connection.send("GET", "/api/info")  # Connected before the clock starts.
            gate.wait()
            mine = [(kind, connection.send(*request)[0]) for kind, request in rounds]
        except Exception as error:  # Reported below: a thread's exception would otherwise be lost.
            failures.append(error)
        finally:
            connection.close()
        with lock:
            for kind, seconds in mine:
                together[kind].append(seconds)

    threads = [threading.Thread(target=client, args=(rounds,)) for rounds in work]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise failures[0]
    return {"single": {kind: percentiles(times) for kind, times in single.items()},
            "concurrent": {**{kind: percentiles(times) for kind, times in together.items()}, "clients": clients,
                           "requests_per_s": round(sum(map(len, together.values())) / wall, 1)}}


def measure_map(port: int, n: int, tries: int) -> dict:
    """Seconds to fetch /api/map and decode it with numpy (float32 x[N], y[N], uint16 group[N]), each try."""
    client, times = Client(port), []
    for _ in range(tries):
        started = time.perf_counter()
        _, headers, body = client.send("GET", "/api/map")
        if headers.get("Content-Type") != "application/octet-stream" or len(body) != 10 * n:
            raise RuntimeError(f"/api/map: {len(body):,} bytes of {headers.get('Content-Type')}; "
                               f"expected the binary map of {n:,} points ({10 * n:,} bytes)")
        x = np.frombuffer(body, "<f4", n, 0)
        y = np.frombuffer(body, "<f4", n, 4 * n)
        group = np.frombuffer(body, "<u2", n, 8 * n)
        points = int(np.count_nonzero(np.isfinite(x) & np.isfinite(y)))
        groups = int(np.unique(group).size)
        times.append(time.perf_counter() - started)
    client.close()
    return {"first_s": round(times[0], 3), "median_s": round(statistics.median(times), 3), "tries": tries,
            "bytes": len(body), "points": points, "groups": groups}


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


def serve(folder: Path, port: int, timeout: float) -> tuple[subprocess.Popen, float]:
    """`toolkit serve` over the prepared files on 127.0.0.1:port, a fresh feedback store; (process, start-up seconds)."""
    db = folder / "feedback.sqlite"
    for stale in folder.glob("feedback.sqlite*"):
        stale.unlink()
    log = (folder / "serve.log").open("w")
    started = time.perf_counter()
    process = subprocess.Popen(
        toolkit("serve", str(folder / "index"), "--img-directory", str(folder / "images"), "--db", str(db),
                "--data-csv", str(folder / "labels.csv"), "--map", str(folder / "map.csv"),
                "--scores", str(folder / "scores.npz"), "--host", HOST, "--port", str(port), "--quiet"),
        stdout=log, stderr=log, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    while True:
        if process.poll() is not None:
            lines = (folder / "serve.log").read_text().strip().splitlines()
            sys.exit(f"toolkit serve stopped: {lines[-1] if lines else 'no message'}")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=5)
            connection.request("GET", "/api/info")
            if connection.getresponse().status == 200:
                connection.close()
                return process, time.perf_counter() - started
        except OSError:
            pass
        if time.perf_counter() - started > timeout:
            process.kill()
            sys.exit(f"toolkit serve did not answer within {timeout:.0f} s; see {folder / 'serve.log'}")
        time.sleep(0.2)


def baselines(features: np.ndarray, queries: int, seed: int) -> dict:
    """Milliseconds a query of the original project's way takes here, and of one pass over the features (the limit).

    The original way: normalise every row (an N x D copy), one product,
    sort all N scores. The limit: `features @ vector`, best of several, which
    reads each float32 once; its rate is this machine's memory bandwidth.
    """
    rows = np.ascontiguousarray(features, dtype=np.float32)  # In memory, as the original scripts held them.
    rng = np.random.default_rng([seed, 4])
    original = []
    for _ in range(queries):
        query = rows[int(rng.integers(len(rows)))]
        started = time.perf_counter()
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        scores = unit @ (query / np.linalg.norm(query))
        np.argsort(-scores)[:40]
        original.append(time.perf_counter() - started)
        del unit
    passes = []
    for _ in range(10):
        vector = rng.standard_normal(rows.shape[1], dtype=np.float32)
        started = time.perf_counter()
        rows @ vector
        passes.append(time.perf_counter() - started)
    limit = min(passes)
    return {"original_ms": round(statistics.median(original) * 1000, 1), "limit_ms": round(limit * 1000, 2),
            "bandwidth_gb_s": round(rows.nbytes / limit / 1e9, 1)}


def bench_size(workdir: Path, data: dict, args: argparse.Namespace) -> dict:
    from image_toolkit.data_tools.formats.features import open_features

    load_before = os.getloadavg()
    folder = workdir / f"n{data['n']}"
    prepared = prepare(folder, data)
    features = open_features(folder / "features.feat").features
    requests = Requests(features, data["clusters"], data["spread"], data["seed"])
    port = free_port()
    process, startup = serve(folder, port, args.start_timeout)
    try:
        latency = measure_latency(port, requests, args.requests, args.clients)
        map_time = measure_map(port, data["n"], args.map_tries)
        peak = peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait()
    base = baselines(features, args.baseline_queries, data["seed"])
    feature_bytes = data["n"] * data["dim"] * 4
    rss_goal = (feature_bytes + SPARE_BYTES) / 2**20
    server_p50 = min(latency["single"][kind]["p50_ms"] for kind in ("vector", "refine"))
    return {
        "n": data["n"], "dim": data["dim"], "feature_bytes": feature_bytes, **prepared,
        "startup_s": round(startup, 1), "peak_rss_mb": round(peak), "rss_goal_mb": round(rss_goal),
        "latency": latency, "map": map_time, "baseline": base,
        "ratios": {
            "p95_of_goal": {kind: round(latency["single"][kind]["p95_ms"] / P95_GOAL_MS, 3) for kind in KINDS},
            "rss_of_goal": round(peak / rss_goal, 3),
            "map_of_goal": round(map_time["median_s"] / MAP_GOAL_S, 3),
            "original_over_server_p50": round(base["original_ms"] / server_p50, 1),
            "server_p50_over_limit": round(server_p50 / base["limit_ms"], 3),
        },
        "load": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]},
    }


def table(result: dict) -> str:
    """The printed report of one size."""
    n, ratios = result["n"], result["ratios"]
    goal_note = "" if n == GOAL_N else f" (the goal is for N = {GOAL_N:,})"
    lines = [
        f"N={n:,} x D={result['dim']} float32 ({result['feature_bytes'] / 2**30:.2f} GiB); {os.cpu_count()} cores, "
        f"load {result['load']['before'][0]:.1f} before, {result['load']['after'][0]:.1f} after",
        f"  prepared: data {result['write_s']} s, index build {result['index_build_s']} s "
        f"(recall@10 {result['index_tuning'].get('recall')} at {result['index_tuning'].get('parameter')}="
        f"{result['index_tuning'].get('value')})",
        f"  serve: start-up {result['startup_s']} s, peak RSS {result['peak_rss_mb']:,} MB "
        f"({ratios['rss_of_goal']:.2f} of goal {result['rss_goal_mb']:,} MB = feature bytes + 1 GB)",
        f"  {'request':<10} {'clients':>7} {'p50 ms':>8} {'p95 ms':>8}  p95 / goal {P95_GOAL_MS} ms{goal_note}",
    ]
    for phase, clients in (("single", 1), ("concurrent", result["latency"]["concurrent"]["clients"])):
        for kind in KINDS:
            measured = result["latency"][phase][kind]
            versus = f"{measured['p95_ms'] / P95_GOAL_MS:10.2f}" if phase == "single" else ""
            lines.append(f"  {kind:<10} {clients:>7} {measured['p50_ms']:8.1f} {measured['p95_ms']:8.1f}  {versus}")
    lines += [
        f"  {result['latency']['concurrent']['clients']} clients: {result['latency']['concurrent']['requests_per_s']:,} "
        "requests/s in all",
        f"  map of {result['map']['points']:,} points ({result['map']['bytes'] / 2**20:.1f} MiB): first "
        f"{result['map']['first_s']} s, median {result['map']['median_s']} s of {result['map']['tries']} "
        f"({ratios['map_of_goal']:.2f} of goal {MAP_GOAL_S} s)",
        f"  original way (normalise N x D, product, full sort): {result['baseline']['original_ms']:,} ms a query = "
        f"{ratios['original_over_server_p50']:,}x the server's p50",
        f"  limit (one pass over N x D at {result['baseline']['bandwidth_gb_s']} GB/s): {result['baseline']['limit_ms']} ms; "
        f"server p50 / limit = {ratios['server_p50_over_limit']}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000], help="images (rows) to serve")
    parser.add_argument("--dim", type=int, default=256, help="features per row")
    parser.add_argument("--clusters", type=int, default=len(CLASSES), help="clusters, one class each")
    parser.add_argument("--spread", type=float, default=1.5, help="noise around each centre (centres have scale 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind, single client and concurrent")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients")
    parser.add_argument("--map-tries", type=int, default=5)
    parser.add_argument("--baseline-queries", type=int, default=3, help="queries timed the original project's way")
    parser.add_argument("--start-timeout", type=float, default=900, help="seconds to wait for the server to answer")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here and reuse them (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object, not the table")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_webapp_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in args.sizes:
            data = {"n": n, "dim": args.dim, "clusters": args.clusters, "spread": args.spread, "seed": args.seed}
            results.append(bench_size(workdir, data, args))
            if not args.json:
                print(table(results[-1]), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"cores": os.cpu_count(), "goals": {"p95_ms": P95_GOAL_MS, "p95_at_n": GOAL_N,
                          "rss": "feature bytes + 1 GB", "map_s": MAP_GOAL_S}, "sizes": results}))


if __name__ == "__main__":
    main()
