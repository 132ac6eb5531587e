"""Load test of `toolkit serve`: concurrent clients post feedback events; none may be lost.

A live server (`toolkit serve`, a subprocess) on 127.0.0.1 and a free port,
over real digits (scikit-learn, offline; --n_images of them) with pixel features; CLIENTS
threads, each with its own keep-alive HTTP connection, post POSTS distinct
events each. The script then counts the events in the SQLite store and
prints requests/s.

    python benchmarks/bench_feedback_load.py [--clients 20] [--posts 500] [--n_images 300]

Loopback only: the server binds 127.0.0.1 and nothing else is contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(index_dir: Path, images_dir: Path, db: Path, *, labels: Path | None = None, timeout: float = 60):
    """`toolkit serve` in a subprocess on 127.0.0.1 and a free port; yields its base URL, stops it after."""
    import httpx

    port = free_port()
    command = [sys.executable, "-c", "from image_toolkit.cli.main import toolkit; toolkit()", "serve", str(index_dir),
               "--images", str(images_dir), "--db", str(db), "--port", str(port), "--quiet"]
    if labels is not None:
        command += ["--labels", str(labels)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"toolkit serve stopped: {process.stderr.read()}")
            try:
                if httpx.get(f"{url}/api/info", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"toolkit serve did not answer within {timeout} s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def post_events(url: str, images: list[str], query_class: str, *, clients: int, posts: int) -> dict:
    """`clients` threads post `posts` distinct events each; returns counts by status and requests/s."""
    import httpx

    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client(number: int) -> None:
        mine: dict[int, int] = {}
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(posts):
                event = {"user": f"user{number}", "session": f"load-{number}", "timestamp": "2024-05-01T12:00:00Z",
                         "query_class": query_class, "action": ("lasso", "select", "deselect")[i % 3],
                         "images": [images[(number * posts + i) % len(images)]], "id": f"load-{number}-{i}"}
                code = http.post("/api/feedback", json=event).status_code
                mine[code] = mine.get(code, 0) + 1
        with lock:
            for code, count in mine.items():
                statuses[code] = statuses.get(code, 0) + count

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"requests": clients * posts, "statuses": statuses, "seconds": round(seconds, 2),
            "requests_per_s": round(clients * posts / seconds, 1)}


def stored_events(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def build(folder: Path, n_images: int) -> tuple[Path, Path, Path]:
    """Digits, their pixel features in a flat index, and their label CSV: (index, images, labels)."""
    from PIL import Image

    from image_toolkit.data_tools.formats.features import FeatureSet
    from image_toolkit.data_tools.make_demo_data import write_digits_dataset
    from image_toolkit.data_tools.search.index import ImageIndex

    table = write_digits_dataset(folder, n_images=n_images, image_size=32, blank_fraction=0.0, seed=3)
    names = table["image"].tolist()
    rows = np.stack([np.asarray(Image.open(folder / "images" / n).convert("L"), dtype=np.float32).ravel() / 255 for n in names])
    ImageIndex(kind="flat").fit(FeatureSet(names, rows, {"model": "pixels"})).save(folder / "index")
    return folder / "index", folder / "images", folder / "label.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--n_images", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        index_dir, images_dir, labels = build(folder, args.n_images)
        db = folder / "feedback.sqlite"
        images = sorted(p.name for p in images_dir.iterdir())
        with live_server(index_dir, images_dir, db, labels=labels) as url:
            result = post_events(url, images, "even", clients=args.clients, posts=args.posts)
        result["stored"] = stored_events(db)
    print(json.dumps(result))
    print(f"{args.clients} clients x {args.posts} posts: {result['stored']:,} of {result['requests']:,} events stored, "
          f"{result['requests_per_s']:.0f} requests/s ({result['seconds']} s).")


if __name__ == "__main__":
    main()
