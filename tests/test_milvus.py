"""`toolkit index build --backend milvus` against Milvus Lite: the same answers as faiss, recall, growth, reload, the web app.

Milvus Lite runs in this process (one server per .db file, kept until the
process exits), so the tests share one built index and stay few.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus extra (pymilvus, milvus-lite) is not installed")
pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (the milvus extra)")

from image_toolkit.cli import index as cli_index  # noqa: E402
from image_toolkit.cli.index import index  # noqa: E402
from image_toolkit.cli.search import search  # noqa: E402
from image_toolkit.data_tools.formats.features import FeatureSet, write_features  # noqa: E402
from image_toolkit.data_tools.search import backends  # noqa: E402
from image_toolkit.data_tools.search.backends import load_index  # noqa: E402
from image_toolkit.data_tools.search.index import ImageIndex  # noqa: E402
from image_toolkit.data_tools.search.milvus import MilvusIndex, _release_lite, connect  # noqa: E402
from tests.conftest import one_line_error  # noqa: E402
from tests.test_index import clustered, feature_set  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def top(runner, index_dir: Path, queries: Path, k: int = 1) -> list[list[tuple[str, float]]]:
    """(path, distance) of each query's k results, from `toolkit search --json`."""
    result = runner.invoke(search, [str(index_dir), "--features", str(queries), "-k", str(k), "--json"])
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    return [[(r["path"], r["distance"]) for r in answer["results"]] for answer in answers]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """3000 clustered rows in a Milvus hnsw index and in an exact faiss one, 200 new rows as queries and as more images."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("milvus")
    rows = clustered(3200)
    write_features(root / "features.npz", feature_set(rows[:3000]))
    write_features(root / "more.npz", feature_set(rows[3000:], start=3000))
    runner = CliRunner()
    result = runner.invoke(index, ["build", str(root / "features.npz"), str(root / "milvus_index"), "--backend", "milvus",
                                   "--kind", "hnsw", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    ImageIndex(kind="flat").fit(feature_set(rows[:3000])).save(root / "flat_index")
    return root, json.loads(result.stdout)


def test_build_measures_recall_and_finds_what_exact_faiss_finds(runner, built):
    root, report = built
    assert report["backend"] == "milvus" and report["size"] == 3000 and report["kind"] == "hnsw"
    assert report["uri"] == str(root / "milvus_index" / "milvus.db")
    tuning = report["tuning"]
    assert tuning["parameter"] == "ef" and tuning["sample"] == 300 and tuning["recall"] >= 0.95
    metadata = json.loads(next((root / "milvus_index").glob("set-*/metadata.json")).read_text())
    assert metadata["uri"] == "milvus.db" and metadata["collection"] == report["collection"]  # Relative: the folder can move.

    milvus, exact = top(runner, root / "milvus_index", root / "more.npz"), top(runner, root / "flat_index", root / "more.npz")
    same = [m[0][0] == e[0][0] for m, e in zip(milvus, exact)]
    assert np.mean(same) >= 0.97
    assert all(abs(m[0][1] - e[0][1]) < 1e-5 for m, e, ok in zip(milvus, exact, same) if ok)  # Cosine distance, as faiss.


@pytest.mark.parametrize("metric", ["euclidean", "inner_product"])
def test_values_follow_faiss_conventions_on_a_memmap(tmp_path, metric):
    """Exact (flat) Milvus search gives faiss's values: the euclidean distance (not Milvus's square), the inner product."""
    rows = clustered(400, 16)
    np.save(tmp_path / "rows.npy", rows)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")  # Streamed block by block, never read whole.
    milvus = MilvusIndex(uri=str(tmp_path / "m.db"), kind="flat", metric=metric).fit(feature_set(mapped))
    values, ids = milvus.search(rows[:20] + 0.1, k=5)
    expected_values, expected_ids = ImageIndex(kind="flat", metric=metric).fit(feature_set(rows)).search(rows[:20] + 0.1, k=5)
    np.testing.assert_allclose(values, expected_values, rtol=1e-5, atol=1e-4)
    # The same rows, but for ties: two rows whose values agree to float32 rounding may come in either order.
    swapped = ids != expected_ids
    assert swapped.mean() < 0.05
    np.testing.assert_allclose(np.sort(values[swapped]), np.sort(expected_values[swapped]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(milvus.vectors(), rows)


def test_add_info_and_reload_in_a_new_process(runner, built):
    root, report = built
    folder = root / "milvus_index"
    added = runner.invoke(index, ["add", str(folder), str(root / "more.npz"), "--json", "--quiet"])
    assert added.exit_code == 0, added.output
    grown = json.loads(added.stdout)
    assert grown["added"] == 200 and grown["size"] == 3200 and grown["tuning"]["sample"] == 100
    shown = runner.invoke(index, ["info", str(folder)])
    assert shown.exit_code == 0 and f"backend: milvus at {folder / 'milvus.db'}, collection {report['collection']}" in shown.output

    command = [sys.executable, "-m", "image_toolkit.cli.main", "search", str(folder), "--features", str(root / "more.npz"),
               "-k", "1", "--json"]
    # This process's Lite server holds the database: another process is refused in one line, naming it.
    locked = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = locked.stderr.strip().splitlines()
    assert locked.returncode == 1 and len(lines) == 1, locked.stderr
    assert lines[0].startswith(f"Error: {folder / 'milvus.db'}: cannot open") and "another process" in lines[0]
    _release_lite(folder / "milvus.db")
    reloaded = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert reloaded.returncode == 0, reloaded.stderr
    answers = [json.loads(line) for line in reloaded.stdout.splitlines()]
    assert [a["results"][0]["path"] for a in answers] == [a["query"] for a in answers]  # Each added image finds itself.


def test_the_web_app_serves_a_milvus_index(tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed")
    from fastapi.testclient import TestClient

    from image_toolkit.data_tools.make_demo_data import write_digits_dataset
    from tests.test_webapp import create_app, pixels

    table = write_digits_dataset(tmp_path, n_images=30, image_size=32, blank_fraction=0.0, seed=5)
    names = table["image"].tolist()
    features = pixels([tmp_path / "images" / name for name in names])
    MilvusIndex(uri=str(tmp_path / "index" / "milvus.db"), kind="flat").fit(FeatureSet(names, features, {"model": "pixels"})) \
        .save(tmp_path / "index")
    app = create_app(tmp_path / "index", tmp_path / "images", tmp_path / "f.sqlite", labels=tmp_path / "label.txt", embed=pixels)
    content = (tmp_path / "images" / names[7]).read_bytes()
    client = TestClient(app)
    answer = client.post("/api/search/image", files={"file": ("q.png", content, "image/png")}, params={"k": 3}).json()
    assert answer["results"][0]["image"] == names[7]
    # Rows read from Milvus by id (`MilvusIndex.rows`): a refine's query and judged rows, and the PCA map's blocks.
    np.testing.assert_allclose(app.state.collection.rows([29, 3, 3]), features[[29, 3, 3]], rtol=1e-6)
    refined = client.post("/api/search/refine", json={"query": {"id": 7}, "selected": [7], "k": 3}).json()
    assert refined["results"][0]["id"] == 7
    assert len(client.get("/api/map").content) == 30 * 10


def test_overwrite_drops_the_replaced_collection(runner, tmp_path):
    write_features(tmp_path / "f.npz", feature_set(clustered(300, 8)))
    names = []
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(index, ["build", str(tmp_path / "f.npz"), str(tmp_path / "i"), "--backend", "milvus",
                                       "--kind", "flat", "--json", "--quiet", *extra])
        assert result.exit_code == 0, result.output
        names.append(json.loads(result.stdout)["collection"])
    assert connect(str(tmp_path / "i" / "milvus.db")).list_collections() == [names[1]]
    assert load_index(tmp_path / "i").info()["collection"] == names[1]


@pytest.mark.parametrize("arguments, code, message", [
    (["--backend", "milvus", "--uri", "http://127.0.0.1:1"], 1, "http://127.0.0.1:1: cannot reach the Milvus server"),
    (["--backend", "milvus", "--uri", "elsewhere/index.sqlite"], 2, "--uri must be a Milvus Lite file ending in .db"),
    (["--backend", "milvus", "--kind", "ivfpq"], 2, "--kind ivfpq is not available with --backend milvus"),
    (["--uri", "x.db"], 2, "--uri applies to --backend milvus only"),
])
def test_bad_backend_options_are_one_line(runner, built, tmp_path, arguments, code, message):
    root, _ = built
    result = runner.invoke(index, ["build", str(root / "features.npz"), str(tmp_path / "i"), *arguments])
    assert result.exit_code == code and message in one_line_error(result)
    assert not (tmp_path / "i").exists()


def test_without_pymilvus_the_error_says_what_to_install(runner, built, tmp_path, monkeypatch):
    root, _ = built
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # As if not installed: importing it raises ImportError.
    result = runner.invoke(index, ["build", str(root / "features.npz"), str(tmp_path / "i"), "--backend", "milvus"])
    assert result.exit_code == 1 and 'pip install "image-toolkit[milvus]"' in one_line_error(result)
    assert cli_index.BACKENDS == backends.BACKENDS  # Repeated in the CLI so that --help loads no faiss.


def test_rows_an_interrupted_add_left_are_skipped_then_replaced(tmp_path):
    """An add that inserted rows but died before its paths.json: searches ignore them, the next add reuses their ids."""
    rows = clustered(330, 8)
    MilvusIndex(uri=str(tmp_path / "i" / "milvus.db"), kind="flat").fit(feature_set(rows[:300])).save(tmp_path / "i")
    crashed = load_index(tmp_path / "i")
    crashed._insert(rows[300:], 300)  # What a killed `index add` leaves: rows in the collection, none in the folder.
    reloaded = load_index(tmp_path / "i")
    assert reloaded.size == 300 and reloaded.search(rows[300:], k=5)[1].max() < 300
    reloaded.add(feature_set(rows[310:], start=310))
    _, ids = reloaded.search(rows[310:], k=1)
    assert reloaded.size == 320 and [reloaded.paths_[i] for i in ids[:, 0]] == [f"images/{i:05d}.jpg" for i in range(310, 330)]
    # The left rows are gone (Milvus Lite replaces a row by id anyway; a server keeps both, hence the delete in add).
    assert (reloaded.search(rows[300:310], k=1)[0] > 1e-3).all()
