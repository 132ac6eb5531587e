"""The web app ranks through its faiss index, in the index's metric, exactly as a scan of every row would.

Each test builds a small flat index of random rows (no ties) for cosine,
euclidean and inner product, and compares the endpoints' top k, ids and
scores, with the exact ranking computed here in plain numpy.
"""

import tracemalloc

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from image_toolkit.data_tools.formats.features import FeatureSet  # noqa: E402
from image_toolkit.data_tools.make_demo_data import write_digits_dataset  # noqa: E402
from image_toolkit.data_tools.search import rocchio  # noqa: E402
from image_toolkit.data_tools.search.index import ImageIndex  # noqa: E402
from image_toolkit.data_tools.web.app import LEARNED_WEIGHT, create_app  # noqa: E402

N, D, K = 40, 8, 10
METRICS = ("cosine", "euclidean", "inner_product")


def exact_scores(query: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """Larger is nearer, as the app reports: cosine similarity, minus the euclidean distance, or the inner product."""
    query, rows = query.astype(np.float64), rows.astype(np.float64)
    if metric == "cosine":
        return rows @ query / (np.linalg.norm(rows, axis=1) * np.linalg.norm(query))
    if metric == "euclidean":
        return -np.linalg.norm(rows - query, axis=1)
    return rows @ query


def exact_top(query, rows, metric, k=K):
    scores = exact_scores(query, rows, metric)
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return order.tolist(), scores[order]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranking")
    table = write_digits_dataset(root, n_images=N, image_size=8, blank_fraction=0.0, seed=3)
    rows = np.random.default_rng(7).standard_normal((N, D)).astype(np.float32) + 0.3
    return {"root": root, "names": table["image"].tolist(), "rows": rows}


def served(images, tmp_path, metric, embed=None):
    ImageIndex(kind="flat", metric=metric).fit(FeatureSet(images["names"], images["rows"], {"model": "x"})).save(tmp_path / "index")
    app = create_app(tmp_path / "index", images["root"] / "images", tmp_path / "f.sqlite",
                     labels=images["root"] / "label.txt", embed=embed, allowed_hosts=["testserver"])
    return app, TestClient(app)


def check(answer, expected_ids, expected_scores):
    assert [r["id"] for r in answer["results"]] == expected_ids
    np.testing.assert_allclose([r["score"] for r in answer["results"]], expected_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_image_and_vector_queries_search_the_index_in_its_metric(images, tmp_path, metric, monkeypatch):
    query = np.random.default_rng(1).standard_normal(D).astype(np.float32) * 3
    app, client = served(images, tmp_path, metric, embed=lambda paths: query[None])
    index = app.state.collection.index
    calls = []
    search = index.search
    monkeypatch.setattr(index, "search", lambda queries, **kw: calls.append(queries.shape) or search(queries, **kw))
    monkeypatch.setattr(rocchio, "rank", None)  # The old full scan: must not be used.
    expected = exact_top(query, images["rows"], metric)
    assert client.get("/api/info").json()["metric"] == metric
    content = (images["root"] / "images" / images["names"][0]).read_bytes()
    check(client.post("/api/search/image", files={"file": ("q.png", content, "image/png")}, params={"k": K}).json(), *expected)
    check(client.post("/api/search/refine", json={"query": {"vector": query.tolist()}, "k": K}).json(), *expected)
    assert calls == [(1, D), (1, D)]


@pytest.mark.parametrize("metric", METRICS)
def test_rocchio_refined_query_is_searched_through_the_index(images, tmp_path, metric):
    rows, selected, deselected = images["rows"], [3, 11, 20], [5, 8]
    _, client = served(images, tmp_path, metric)
    space = (lambda r: r / np.linalg.norm(r, axis=-1, keepdims=True)) if metric == "cosine" else (lambda r: r)
    refined = space(rows[2]) + 0.75 * space(rows[selected]).mean(axis=0) - 0.15 * space(rows[deselected]).mean(axis=0)
    answer = client.post("/api/search/refine", json={"query": {"id": 2}, "selected": selected, "deselected": deselected,
                                                     "k": K}).json()
    check(answer, *exact_top(refined, rows, metric))


@pytest.mark.parametrize("metric", METRICS)
def test_learned_keyword_ranks_candidates_as_a_scan_of_every_row_would(images, tmp_path, metric, monkeypatch):
    """Confirmed images raise the centroid's neighbours, a rejected one drops: the same top k as scoring all N.

    Only the voted rows are re-scored by hand; the others come from the index.
    """
    rows, names = images["rows"], images["names"]
    _, client = served(images, tmp_path, metric)
    scored, similarities = [], rocchio.similarities
    monkeypatch.setattr(rocchio, "similarities", lambda query, features, **kw: scored.append(len(features))
                        or similarities(query, features, **kw))
    event = {"user": "ann", "session": "s1", "timestamp": "2024-05-01T12:30:00Z", "query_class": "even"}
    confirmed, rejected = [4, 9, 30], [17]
    assert client.post("/api/feedback", json={**event, "action": "select", "images": [names[i] for i in confirmed]}).status_code == 200
    assert client.post("/api/feedback", json={**event, "session": "s2", "action": "deselect", "images": [names[17]]}).status_code == 200
    space = (lambda r: r / np.linalg.norm(r, axis=-1, keepdims=True)) if metric == "cosine" else (lambda r: r)
    scores = exact_scores(space(rows[confirmed]).mean(axis=0), rows, metric)
    scores[confirmed] += LEARNED_WEIGHT
    scores[rejected] -= LEARNED_WEIGHT
    order = np.lexsort((np.arange(N), -scores))[:K]
    check(client.get("/api/search", params={"q": "even", "k": K}).json(), order.tolist(), scores[order])
    assert scored == [len(confirmed) + len(rejected)]


@pytest.mark.parametrize("metric", METRICS)
def test_rank_makes_no_copy_of_the_rows(metric):
    """rocchio.rank normalises only the query: its peak memory is far below one N x D copy (the old cosine made one)."""
    rows = np.random.default_rng(0).standard_normal((20_000, 64)).astype(np.float32)
    query = rows[5] + 0.01
    tracemalloc.start()
    ids, scores = rocchio.rank(query, rows, metric=metric, k=K)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < rows.nbytes / 8
    expected_ids, expected_scores = exact_top(query, rows, metric)
    assert ids.tolist() == expected_ids
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-3, atol=1e-3)


def test_rank_leaves_out_the_excluded_and_still_gives_k():
    rows = np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32)
    everything, _ = rocchio.rank(rows[0], rows, k=None)
    ids, _ = rocchio.rank(rows[0], rows, k=5, exclude=[0, int(everything[1])])
    assert ids.tolist() == [i for i in everything.tolist() if i not in (0, int(everything[1]))][:5]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_rows_by_id_are_the_features_as_given_for_every_kind(kind, metric):
    """`ImageIndex.rows`, what the app reads per request: any ids, in their order, repeats kept; cosine rows re-scaled."""
    rows = np.random.default_rng(4).standard_normal((400, 16)).astype(np.float32) * 3
    index = ImageIndex(kind=kind, metric=metric, target_recall=None).fit(
        FeatureSet([f"{i}.png" for i in range(400)], rows, {"model": "x"}), show=False)
    ids = [399, 0, 17, 17]
    np.testing.assert_allclose(index.rows(ids), rows[ids], rtol=1e-5, atol=1e-5)
