"""`toolkit serve`: the API with FastAPI's test client, refusals, a live load test and a real browser.

Real data: scikit-learn digits at 32 px, their grey pixels as features, the
four yes/no labels of the demo data set as the feedback store's classes.
"""

import contextlib
import importlib.util
import logging
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from image_toolkit.cli.main import toolkit  # noqa: E402
from image_toolkit.data_tools.formats.features import FeatureSet, write_features  # noqa: E402
from image_toolkit.data_tools.make_demo_data import write_digits_dataset  # noqa: E402
from image_toolkit.data_tools.search.index import ImageIndex  # noqa: E402
from image_toolkit.data_tools.web.app import LEARNED_WEIGHT, docs_assets_dir  # noqa: E402
from image_toolkit.data_tools.web.app import create_app as create_served_app  # noqa: E402
from tests.conftest import one_line_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CLASSES = ["even", "prime", "five_or_more", "closed_loop"]


def pixels(paths) -> np.ndarray:
    """Grey pixels in [0, 1]: real features that need no network; also the app's `embed` for uploads."""
    return np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32).ravel() / 255 for p in paths])


def create_app(*args, **kwargs):
    """The app as `toolkit serve` builds it, also answering the Host "testserver" of FastAPI's test client."""
    return create_served_app(*args, allowed_hosts=["testserver"], **kwargs)


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_feedback_load", REPO / "benchmarks" / "bench_feedback_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """48 digits, a flat index of their pixels, their labels, and class scores (noisy labels) for keywords."""
    root = tmp_path_factory.mktemp("webapp")
    table = write_digits_dataset(root, n_images=48, image_size=32, blank_fraction=0.0, seed=5)
    names = table["image"].tolist()
    features = pixels([root / "images" / name for name in names])
    ImageIndex(kind="flat").fit(FeatureSet(names, features, {"model": "pixels"})).save(root / "index")
    scores = (0.6 * table[CLASSES].to_numpy(float) + 0.4 * np.random.default_rng(0).random((48, 4))).astype(np.float32)
    write_features(root / "scores.npz", FeatureSet(names, scores, {"model": "labels", "output": "scores", "class_names": CLASSES}))
    (root / "secret.txt").write_text("not for the web")
    return {"root": root, "names": names, "features": features, "scores": scores, "table": table}


def make_app(digits, db: Path, **settings):
    root = digits["root"]
    return create_app(root / "index", root / "images", db, labels=root / "label.txt", scores=root / "scores.npz",
                      embed=pixels, **settings)


@pytest.fixture
def client(digits, tmp_path):
    return TestClient(make_app(digits, tmp_path / "feedback.sqlite", max_upload_bytes=20_000))


def event(images, action="lasso", query_class="even", **extra):
    return {"user": "ann", "session": "s1", "timestamp": "2024-05-01T12:30:00Z", "query_class": query_class,
            "action": action, "images": images, **extra}


# Searching.


def test_keyword_search_ranks_by_class_scores(client, digits):
    answer = client.get("/api/search", params={"q": "even", "k": 5}).json()
    expected = np.lexsort((np.arange(48), -digits["scores"][:, 0]))[:5]
    assert answer["query_class"] == "even" and [r["id"] for r in answer["results"]] == expected.tolist()
    assert answer["results"][0]["image"] == digits["names"][expected[0]] and answer["results"][0]["rank"] == 1


def test_learned_query_raises_confirmed_images_by_the_documented_weight(client, digits):
    last = client.get("/api/search", params={"q": "prime", "k": 48}).json()["results"][-1]
    assert client.post("/api/feedback", json=event([last["image"]], "select", "prime")).status_code == 200
    again = {r["id"]: r for r in client.get("/api/search", params={"q": "prime", "k": 48}).json()["results"]}[last["id"]]
    assert again["score"] == pytest.approx(last["score"] + LEARNED_WEIGHT, abs=1e-5) and again["rank"] < last["rank"]


def test_each_session_votes_once_and_a_deselect_rejects(client, digits):
    def scores():
        return {r["id"]: r["score"] for r in client.get("/api/search", params={"q": "prime", "k": 48}).json()["results"]}

    image, before = digits["names"][0], scores()
    for action in ("lasso", "deselect"):  # One session lassoes the image, then takes it out: -1.
        assert client.post("/api/feedback", json=event([image], action, "prime")).status_code == 200
    assert scores()[0] == pytest.approx(before[0] - LEARNED_WEIGHT, abs=1e-5)
    for user in ("bob", "cy"):  # Two other users select it: net +1.
        answer = client.post("/api/feedback", json=event([image], "select", "prime", user=user, session=user))
        assert answer.status_code == 200
    assert scores()[0] == pytest.approx(before[0] + LEARNED_WEIGHT, abs=1e-5)


def test_the_latest_judgement_of_a_session_decides_its_vote(client, digits):
    """Deselected, then selected again later: the session votes +1; its events arriving out of order change nothing."""
    def score(image_id):
        return {r["id"]: r["score"] for r in client.get("/api/search", params={"q": "prime", "k": 48}).json()["results"]}[image_id]

    first, second = digits["names"][:2]
    before = score(0), score(1)
    for minute, action in ((30, "lasso"), (31, "deselect"), (32, "select")):
        answer = client.post("/api/feedback", json=event([first], action, "prime", timestamp=f"2024-05-01T12:{minute}:00Z"))
        assert answer.status_code == 200
    for minute, action in ((32, "select"), (31, "deselect"), (33, "deselect")):  # Sent late: the 12:33 deselect is latest.
        answer = client.post("/api/feedback", json=event([second], action, "prime", timestamp=f"2024-05-01T12:{minute}:00Z"))
        assert answer.status_code == 200
    assert score(0) == pytest.approx(before[0] + LEARNED_WEIGHT, abs=1e-5)
    assert score(1) == pytest.approx(before[1] - LEARNED_WEIGHT, abs=1e-5)


def test_image_upload_finds_the_same_image_first(client, digits):
    name = digits["names"][7]
    content = (digits["root"] / "images" / name).read_bytes()
    answer = client.post("/api/search/image", files={"file": ("q.png", content, "image/png")}, params={"k": 3}).json()
    assert answer["results"][0]["image"] == name and len(answer["query_vector"]) == 1024
    refined = client.post("/api/search/refine", json={"query": {"vector": answer["query_vector"]}, "selected": [7], "k": 3})
    assert refined.status_code == 200 and refined.json()["results"][0]["id"] == 7


def test_image_upload_through_the_model_embedder_of_toolkit_serve(runner, tmp_path, digits):
    """The embedder `toolkit serve` passes (`lazy_embedder` over the index's metadata), on a real model file.

    An untrained small_cnn tower saved as a file, its features extracted by
    `toolkit get-transfer-layer` and indexed: an uploaded image is embedded
    by the model the index records and finds itself first.
    """
    from image_toolkit.cli.extract import get_transfer_layer
    from image_toolkit.data_tools.formats.features import read_features
    from image_toolkit.models.embedding import EmbeddingTower
    from image_toolkit.models.upload_embedder import lazy_embedder

    root = digits["root"]
    EmbeddingTower("small_cnn", weights="none", image_size=32, embedding_dim=16).save(tmp_path / "tower.keras")
    result = runner.invoke(get_transfer_layer, [str(root / "images"), str(tmp_path / "f.npz"), "--model", str(tmp_path / "tower.keras"), "--quiet"])
    assert result.exit_code == 0, result.output
    features = read_features(tmp_path / "f.npz")
    ImageIndex(kind="flat").fit(features).save(tmp_path / "index")
    app = create_app(tmp_path / "index", root / "images", tmp_path / "f.sqlite", labels=root / "label.txt",
                     embed=lazy_embedder(lambda: app.state.collection.metadata))
    name = features.paths[7]
    content = (root / "images" / name).read_bytes()
    answer = TestClient(app).post("/api/search/image", files={"file": ("q.png", content, "image/png")}, params={"k": 3}).json()
    assert answer["results"][0]["image"] == name and answer["results"][0]["score"] == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose(answer["query_vector"], features.features[7], rtol=1e-4, atol=1e-5)


def test_refine_is_rocchio_over_the_index_features(tmp_path, digits):
    """Hand-made 2-d features at known angles: the refined order is known exactly (tests/test_rocchio.py)."""
    names = digits["names"][:6]
    rows = np.array([[np.cos(np.radians(a)), np.sin(np.radians(a))] for a in (0, 30, 60, 90, -30, -60)], dtype=np.float32)
    ImageIndex(kind="flat").fit(FeatureSet(names, rows, {"model": "angles"})).save(tmp_path / "index")
    app = create_app(tmp_path / "index", digits["root"] / "images", tmp_path / "f.sqlite", labels=digits["root"] / "label.txt")
    client = TestClient(app)
    plain = client.post("/api/search/refine", json={"query": {"id": 0}, "k": 6}).json()
    assert [r["id"] for r in plain["results"]] == [0, 1, 4, 2, 5, 3]
    refined = client.post("/api/search/refine", json={"query": {"id": 0}, "selected": [2], "deselected": [5], "k": 6}).json()
    assert [r["id"] for r in refined["results"]] == [1, 2, 0, 3, 4, 5]
    assert refined["rocchio"] == {"alpha": 1.0, "beta": 0.75, "gamma": 0.15}


def test_a_euclidean_index_ranks_by_queries_made_of_its_own_rows(tmp_path, digits):
    """Two clusters, short rows near (1, 0) and long ones near (0, 10): confirm the long ones, and they come first.

    A mean of normalised rows is a point near the origin; by euclidean
    distance it lies nearest the short rows, whatever images it was made of.
    """
    names = digits["names"][:8]
    rng = np.random.default_rng(1)
    rows = np.concatenate([[1, 0] + 0.1 * rng.standard_normal((4, 2)), [0, 10] + 0.5 * rng.standard_normal((4, 2))])
    ImageIndex(kind="flat", metric="euclidean").fit(FeatureSet(names, rows.astype(np.float32), {"model": "x"})).save(tmp_path / "index")
    client = TestClient(create_app(tmp_path / "index", digits["root"] / "images", tmp_path / "f.sqlite", labels=digits["root"] / "label.txt"))
    assert client.get("/api/info").json()["metric"] == "euclidean"
    assert client.post("/api/feedback", json=event(names[4:6], "select", "even")).status_code == 200
    searched = client.get("/api/search", params={"q": "even", "k": 4}).json()
    assert sorted(r["id"] for r in searched["results"]) == [4, 5, 6, 7]
    refined = client.post("/api/search/refine", json={"query": {"text": "even"}, "k": 4}).json()
    assert sorted(r["id"] for r in refined["results"]) == [4, 5, 6, 7]


def decode_map(content: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The binary /api/map as documented: float32 x[N], float32 y[N] (little-endian), uint16 group[N]."""
    assert len(content) == n * 10
    coords = np.frombuffer(content[: 8 * n], dtype="<f4").reshape(2, n).T
    return coords, np.frombuffer(content[8 * n :], dtype="<u2")


def test_map_gives_pca_coordinates_or_the_tsne_csv(client, digits, tmp_path):
    """PCA of the pixels as scikit-learn makes it (up to each axis's sign), or the CSV's numbers, NaN where it has none."""
    from sklearn.decomposition import PCA

    answer = client.get("/api/map")
    assert answer.headers["content-type"] == "application/octet-stream" and answer.headers["x-map-source"] == "pca"
    coords, _ = decode_map(answer.content, 48)
    expected = PCA(n_components=2).fit_transform(digits["features"].astype(np.float64))
    signs = np.sign((coords * expected).sum(axis=0))
    np.testing.assert_allclose(coords * signs, expected, atol=1e-3)
    (tmp_path / "tsne.csv").write_text("image,x,y\n" + "".join(f"{n},{i},{-i}\n" for i, n in enumerate(digits["names"][:10])))
    app = make_app(digits, tmp_path / "m.sqlite", map_csv=tmp_path / "tsne.csv")
    answer = TestClient(app).get("/api/map")
    assert answer.headers["x-map-source"] == "tsne.csv" and answer.headers["x-map-points"] == "10"
    coords, _ = decode_map(answer.content, 48)
    np.testing.assert_array_equal(coords[:10], np.stack([np.arange(10), -np.arange(10)], axis=1))
    assert np.isnan(coords[10:]).all()


def test_page_thumbnails_and_openapi(client):
    assert "lasso" in client.get("/").text and client.get("/static/app.js").status_code == 200
    thumb = client.get("/api/thumbnails/0")
    assert thumb.headers["content-type"] == "image/png" and Image.open(__import__("io").BytesIO(thumb.content)).size == (32, 32)
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/search/image", "/api/search/refine", "/api/feedback", "/api/feedback/export",
            "/api/images/{image_id}", "/api/thumbnails/{image_id}", "/api/map"} <= set(paths)


def needs_docs_assets():
    if docs_assets_dir() is None:
        pytest.skip("the offline API docs need fastapi-offline (serve extra): pip install fastapi-offline")


# Where a docs page names a URL: src= and href= attributes, ReDoc's spec-url=, Swagger UI's set-up `url: '...'`.
ASSET_URL = re.compile(r"""(?:\b(?:src|href|spec-url)\s*=|\burl\s*:)\s*["']([^"']+)["']""")


def asset_urls(html: str) -> list[str]:
    """Every URL a docs page loads."""
    return ASSET_URL.findall(html)


@pytest.mark.parametrize(("page", "assets"), [
    ("/docs", {"swagger-ui-bundle.js": "javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}),
    ("/redoc", {"redoc.standalone.js": "javascript", "favicon.png": "image/png"}),
])
def test_api_docs_load_only_assets_served_by_the_app(client, page, assets):
    needs_docs_assets()
    html = client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    urls = asset_urls(html.text)
    assert "/openapi.json" in urls and not re.search(r"https?://", html.text), urls
    assert {url.rsplit("/", 1)[-1] for url in urls} == {*assets, "openapi.json"}
    for url in urls:
        answer = client.get(url)
        kind = assets.get(url.rsplit("/", 1)[-1], "application/json")
        assert answer.status_code == 200 and kind in answer.headers["content-type"] and len(answer.content) > 1000, url
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert "/docs" not in client.get("/openapi.json").json()["paths"]


def test_api_docs_without_the_assets_package_fall_back_to_fastapis_pages(digits, tmp_path, monkeypatch, caplog):
    import image_toolkit.data_tools.web.app as web

    monkeypatch.setattr(web, "docs_assets_dir", lambda: None)
    with caplog.at_level(logging.WARNING, logger=web.__name__):
        client = TestClient(make_app(digits, tmp_path / "f.sqlite"))
    assert "pip install fastapi-offline" in caplog.text
    assert client.get("/docs").status_code == 200 and client.get("/docs-assets/swagger-ui.css").status_code == 404


# Feedback.


def test_feedback_is_stored_and_exported(client, digits, tmp_path):
    images = digits["names"][:2]
    first = client.post("/api/feedback", json=event(images)).json()
    assert first["added"] and not client.post("/api/feedback", json=event(images)).json()["added"]  # same content: once
    client.post("/api/feedback", json=event(images[1:], "deselect"))
    csv_text = client.get("/api/feedback/export").text.splitlines()
    assert csv_text[0] == "image,class,query_class,lasso_count,deselect_count,select_count,users"
    assert csv_text[2].startswith(f"{images[1]},") and csv_text[2].endswith(",even,1,1,0,1")
    with contextlib.closing(sqlite3.connect(tmp_path / "feedback.sqlite")) as connection:
        assert connection.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2


@pytest.mark.parametrize("body, reason", [
    (event(["9999.png"]), "not in the data set"),
    (event(["0000.png"], query_class="kitchen"), "unknown query_class"),
    (event(["0000.png"], action="like"), "unknown action"),
    (event(["0000.png"], timestamp="yesterday"), "malformed timestamp"),
])
def test_bad_events_are_refused_with_the_reason(client, body, reason):
    answer = client.post("/api/feedback", json=body)
    assert answer.status_code == 422 and reason in answer.json()["detail"][0]["msg"]


# Refusals.


def test_malformed_json_and_missing_fields_are_422(client):
    assert client.post("/api/feedback", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    assert client.post("/api/feedback", json={"user": "ann"}).status_code == 422
    assert client.post("/api/search/refine", content=b"[1,", headers={"Content-Type": "application/json"}).status_code == 422
    assert client.post("/api/search/refine", json={"query": {}}).status_code == 422


@pytest.mark.parametrize("url", [
    "/api/images/../secret.txt", "/api/images/..%2Fsecret.txt", "/api/images/%2e%2e%2fsecret.txt",
    "/api/images/..%252Fsecret.txt", "/api/images//etc/passwd", "/api/images/%2Fetc%2Fpasswd",
    "/api/thumbnails/..%2F..%2Fsecret.txt", "/static/..%2Fwebapp.py", "/static/../webapp.py", "/static/%2Fetc%2Fpasswd",
])
def test_path_traversal_is_refused(client, url):
    answer = client.get(url)
    assert answer.status_code in (404, 405, 422) and b"not for the web" not in answer.content and b"import" not in answer.content


def test_indexed_paths_outside_the_image_folder_are_not_served(tmp_path, digits):
    root = digits["root"]
    names = [digits["names"][0], "../secret.txt", str(root / "secret.txt"), "/etc/passwd"]
    ImageIndex(kind="flat").fit(FeatureSet(names, np.eye(4, dtype=np.float32), {"model": "x"})).save(tmp_path / "index")
    client = TestClient(create_app(tmp_path / "index", root / "images", tmp_path / "f.sqlite", labels=root / "label.txt"))
    assert client.get("/api/images/0").status_code == 200
    for image_id in (1, 2, 3):
        assert client.get(f"/api/images/{image_id}").status_code == 404
        assert client.get(f"/api/thumbnails/{image_id}").status_code == 404


def test_an_indexed_file_that_cannot_be_decoded_is_a_clear_422(tmp_path, digits):
    root = digits["root"]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_text("not a picture")
    ImageIndex(kind="flat").fit(FeatureSet(["broken.png"], np.ones((1, 4), np.float32), {"model": "x"})).save(tmp_path / "index")
    client = TestClient(create_app(tmp_path / "index", tmp_path / "images", tmp_path / "f.sqlite", labels=root / "label.txt"))
    answer = client.get("/api/thumbnails/0")
    assert answer.status_code == 422 and "broken.png" in answer.json()["detail"][0]["msg"]


def test_learned_query_works_when_the_class_scores_name_other_classes(tmp_path, digits):
    root, names = digits["root"], digits["names"]
    other = FeatureSet(names, digits["scores"][:, :2], {"model": "labels", "output": "scores", "class_names": ["cat", "dog"]})
    write_features(tmp_path / "scores.npz", other)
    client = TestClient(create_app(root / "index", root / "images", tmp_path / "f.sqlite", labels=root / "label.txt",
                                   scores=tmp_path / "scores.npz", embed=pixels))
    assert client.get("/api/search", params={"q": "even"}).status_code == 404  # Nothing learned yet.
    assert client.post("/api/feedback", json=event([names[3]], "select", "even")).status_code == 200
    answer = client.get("/api/search", params={"q": "even", "k": 3}).json()
    assert answer["query_class"] == "even" and answer["results"][0]["image"] == names[3]


def test_unknown_ids_oversized_and_non_image_uploads_are_refused(client):
    assert client.get("/api/images/48").status_code == 404 and client.get("/api/images/-1").status_code == 404
    assert client.get("/api/thumbnails/1000").status_code == 404
    assert client.post("/api/search/refine", json={"query": {"id": 0}, "selected": [48]}).status_code == 404
    assert client.post("/api/search/refine", json={"query": {"id": 99}}).status_code == 404
    big = client.post("/api/search/image", files={"file": ("big.png", b"\x89PNG" + b"0" * 30_000, "image/png")})
    assert big.status_code == 413 and "over the limit of 20,000 bytes" in big.json()["detail"]
    huge = client.post("/api/search/image", files={"file": ("huge.png", b"\x89PNG" + b"0" * 200_000, "image/png")})
    assert huge.status_code == 413 and "bytes) is over the upload limit of 20,000 bytes" in huge.json()["detail"]  # Unread.
    text = client.post("/api/search/image", files={"file": ("notes.png", b"hello, not an image", "image/png")})
    assert text.status_code == 415
    assert client.get("/api/search", params={"q": "kitchen"}).status_code == 404


# The command.


def test_serve_help_and_default_host(runner):
    result = runner.invoke(toolkit, ["serve", "--help"])
    assert result.exit_code == 0 and "Example" in result.output
    from image_toolkit.cli.serve import serve

    assert next(p for p in serve.params if p.name == "host").default == "127.0.0.1"


def test_missing_extra_is_one_line(runner, monkeypatch, digits):
    import image_toolkit.data_tools.web.app

    monkeypatch.setattr(image_toolkit.data_tools.web.app, "missing_extra", lambda: 'toolkit serve needs: pip install "image-toolkit[serve]"')
    root = digits["root"]
    result = runner.invoke(toolkit, ["serve", str(root / "index"), "--images", str(root / "images")])
    assert result.exit_code == 1 and 'pip install "image-toolkit[serve]"' in one_line_error(result)


def test_no_data_set_in_the_store_is_one_line(runner, digits, tmp_path):
    root = digits["root"]
    result = runner.invoke(toolkit, ["serve", str(root / "index"), "--images", str(root / "images"), "--db", str(tmp_path / "new.sqlite")])
    assert result.exit_code == 2 and "give --data-csv LABEL_CSV" in one_line_error(result)
    assert not (tmp_path / "new.sqlite").exists()


# A live server.


def test_load_20_clients_500_posts_none_lost(digits, tmp_path, capsys):
    bench = load_benchmark()
    root, db = digits["root"], tmp_path / "load.sqlite"
    with bench.live_server(root / "index", root / "images", db, labels=root / "label.txt") as url:
        assert url.startswith("http://127.0.0.1:")
        result = bench.post_events(url, digits["names"], "even", clients=20, posts=500)
    assert result["statuses"] == {200: 10_000} and bench.stored_events(db) == 10_000
    with capsys.disabled():
        print(f"\nload: 20 clients x 500 posts, 10,000 of 10,000 events stored, {result['requests_per_s']:.0f} requests/s")


@contextlib.contextmanager
def uvicorn_thread(app):
    """The app on 127.0.0.1 and a free port, in a thread of this process; yields its URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def browser_test():
    """Playwright's sync API, or a skip naming what is missing."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium: apt-get install -y chromium")
    return pytest.importorskip("playwright.sync_api", reason="needs Python Playwright: pip install playwright")


def offline_route(url: str):
    """(a Playwright route handler passing requests to `url` and refusing every other, the list of URLs refused)."""
    elsewhere = []

    def offline(route):
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    return offline, elsewhere


def search_even(page, url: str) -> None:
    """Open the page, wait for the store's classes, search 'even' and wait for the grid's 40 thumbnails."""
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#query-class option').length === 5")
    page.fill("#q", "even")
    page.press("#q", "Enter")
    page.wait_for_function("document.getElementById('status').textContent.startsWith(\"Results for 'even'\")")
    page.wait_for_function("document.querySelectorAll('#grid .thumb').length === 40")


def test_browser_api_docs_render_with_no_network(digits, tmp_path):
    """/docs and /redoc draw the API from this app alone, every request elsewhere refused; /docs makes none."""
    sync_api = browser_test()
    needs_docs_assets()
    app = make_app(digits, tmp_path / "docs.sqlite")
    with uvicorn_thread(app) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        offline, elsewhere = offline_route(url)
        try:
            browser.route("**/*", offline)
            page = browser.new_page() if not browser.pages else browser.pages[0]
            page.goto(f"{url}/docs")
            page.wait_for_function("document.querySelectorAll('.opblock').length >= 8", timeout=20_000)
            operations = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent)")
            assert {"/api/search", "/api/search/refine", "/api/feedback", "/api/map"} <= {o.replace("\u200b", "") for o in operations}
            page.screenshot(path=str(tmp_path / "docs.png"))
            assert elsewhere == []
            page.goto(f"{url}/redoc")
            page.get_by_text("/api/search/refine").first.wait_for(timeout=20_000)
        finally:
            browser.close()
    # ReDoc's footer asks for its maker's logo, and hides the image when that fails.
    assert elsewhere in ([], ["https://cdn.redoc.ly/redoc/logo-mini.svg"])


def test_browser_lasso_deselect_submit_refines(digits, tmp_path):
    sync_api = browser_test()
    db = tmp_path / "browser.sqlite"
    app = make_app(digits, db)
    with uvicorn_thread(app) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1000, "height": 900})
        try:
            page = browser.new_page() if not browser.pages else browser.pages[0]
            search_even(page, url)
            thumbs = page.query_selector_all("#grid .thumb")
            boxes = [t.bounding_box() for t in thumbs]
            ids = [int(t.get_attribute("data-id")) for t in thumbs]
            tops = sorted({round(b["y"]) for b in boxes})
            columns = sum(round(b["y"]) == tops[0] for b in boxes)
            # A free-form path around the centres of the first two rows.
            x0, x1 = boxes[0]["x"] + 3, boxes[columns - 1]["x"] + boxes[columns - 1]["width"] - 3
            y0, y2 = boxes[0]["y"] + 3, boxes[columns]["y"] + boxes[columns]["height"] * 0.75
            page.mouse.move(x0, y0)
            page.mouse.down()
            for x, y in [(x1, y0), (x1, y2), ((x0 + x1) / 2, y2 + 4), (x0, y2)]:
                page.mouse.move(x, y, steps=8)
            page.mouse.up()
            lassoed = ids[: 2 * columns]
            assert page.text_content("#counts") == f"Selected: {2 * columns} · Deselected: 0"
            thumbs[2].click()  # deselect one
            page.focus(f"#grid .thumb[data-id='{ids[3 * columns]}']")
            page.keyboard.press("ArrowRight")
            page.keyboard.press("Space")  # select one more by keyboard
            assert page.text_content("#counts") == f"Selected: {2 * columns} · Deselected: 1"
            page.screenshot(path=str(tmp_path / "webapp_selection.png"))
            page.click("#submit")
            page.wait_for_function("document.getElementById('status').textContent.includes('Refined with')")
            shown = [int(t.get_attribute("data-id")) for t in page.query_selector_all("#grid .thumb")]
            page.screenshot(path=str(tmp_path / "webapp_refined.png"))
            # A second round: deselect one more; the refinement keeps the first round's judgements.
            extra = next(i for i in shown if i not in ids[: 3 * columns + 2])
            page.click(f"#grid .thumb[data-id='{extra}']")
            page.click(f"#grid .thumb[data-id='{extra}']")
            page.click("#submit")
            page.wait_for_function("document.getElementById('status').textContent.includes('and 2 deselected')")
            second = [int(t.get_attribute("data-id")) for t in page.query_selector_all("#grid .thumb")]
        finally:
            browser.close()
    names = digits["names"]
    deselected, keyed = ids[2], ids[3 * columns + 1]
    selected = [i for i in lassoed if i != deselected]  # The lasso event still lists the one deselected after it.
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(
            "SELECT events.action, events.query_class, images.name FROM events JOIN event_images ON events.id = event_images.event "
            "JOIN images ON images.id = event_images.image ORDER BY events.action, event_images.position").fetchall()
    assert sorted(r[2] for r in rows if r[0] == "lasso") == sorted(names[i] for i in lassoed)
    assert [r[2] for r in rows if r[0] == "select"] == [names[keyed]]
    assert {r[1] for r in rows} == {"even"}
    assert sorted(r[2] for r in rows if r[0] == "deselect") == sorted([names[deselected], names[extra]])

    def refined_order(net, deselected_ids):
        """The page's order from the documented formulas, in plain numpy: none of the code under test.

        Keyword score plus the learned bonus; the query is the mean of the
        top 40 unit rows; q' = q / |q| + 0.75 mean(selected) - 0.15
        mean(deselected) over unit rows; then the 40 best by cosine, ties by id.
        """
        base = digits["scores"][:, 0] + LEARNED_WEIGHT * np.clip(net, -1, 1)
        top = sorted(range(48), key=lambda i: (-base[i], i))[:40]
        units = digits["features"] / np.linalg.norm(digits["features"], axis=1, keepdims=True)
        query = units[top].mean(axis=0)
        refined = (query / np.linalg.norm(query) + 0.75 * units[selected + [keyed]].mean(axis=0)
                   - 0.15 * units[deselected_ids].mean(axis=0))
        cosine = units @ (refined / np.linalg.norm(refined))
        return sorted(range(48), key=lambda i: (-cosine[i], i))[:40]

    net = np.zeros(48)  # One session: +1 for each image it kept, -1 for each it deselected.
    net[selected + [keyed]] = 1
    net[deselected] = -1
    assert shown == refined_order(net, [deselected])
    net[extra] = -1
    assert second == refined_order(net, [deselected, extra])


def test_oversized_names_and_non_finite_vectors_are_refused(client, digits):
    """A 20 MiB user name is not stored, and NaN or infinity in a query vector is a 422, not a 500."""
    huge = client.post("/api/feedback", json=event([digits["names"][0]], user="u" * 100_000))
    assert huge.status_code == 422
    dim = digits["features"].shape[1]
    for bad in ("NaN", "Infinity", "1e309"):
        body = '{"query": {"vector": [' + ", ".join([bad] + ["0.5"] * (dim - 1)) + "]}}"
        answer = client.post("/api/search/refine", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422, (bad, answer.text)


def test_an_oversized_name_in_an_events_file_is_rejected_with_its_reason():
    from image_toolkit.data_tools.feedback.store import MAX_NAME_LENGTH, check_event

    raw = {**event(["a.png"]), "user": "u" * (MAX_NAME_LENGTH + 1)}
    with pytest.raises(ValueError, match=f"'user' is longer than {MAX_NAME_LENGTH} characters"):
        check_event(raw, {"a.png"}, {"even"})


def test_browser_submit_retries_while_an_import_holds_the_store(digits, tmp_path):
    """The store locked as by a long `feedback import`: the page gets a 503, says so, sends again, and the event is stored once."""
    sync_api = browser_test()
    db = tmp_path / "locked.sqlite"
    app = make_app(digits, db, wait=0.05)
    with uvicorn_thread(app) as url, sync_api.sync_playwright() as playwright, \
            contextlib.closing(sqlite3.connect(db, isolation_level=None)) as importer:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page() if not browser.pages else browser.pages[0]
            search_even(page, url)
            chosen = int(page.get_attribute("#grid .thumb", "data-id"))
            page.click("#grid .thumb")
            importer.execute("BEGIN IMMEDIATE")
            page.click("#submit")
            page.wait_for_function("document.getElementById('status').textContent.includes('busy')", timeout=10_000)
            importer.execute("COMMIT")
            page.wait_for_function("document.getElementById('status').textContent.includes('Refined with')", timeout=20_000)
        finally:
            browser.close()
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT events.key, events.action, images.name FROM events "
                                  "JOIN event_images ON events.id = event_images.event "
                                  "JOIN images ON images.id = event_images.image").fetchall()
    assert [(action, image) for _, action, image in rows] == [("select", digits["names"][chosen])]
    assert rows[0][0].startswith("s-")  # The page's own event id, the same on every try.


# The model's suggestions (`toolkit serve --suggest`): the app takes the ranking as a function, so no network here.


def test_suggested_images_are_listed_for_review_without_the_judged_ones(digits, tmp_path):
    seen = {}

    def suggest(names, judged):
        seen["judged"] = judged
        left = [name for name in names if name not in judged]
        return [{"rank": rank, "image": name, "score": 0.01 * rank, "query_class": "even", "probability": 0.5,
                 "predicted": "even"} for rank, name in enumerate(left[:5], start=1)]

    db = tmp_path / "feedback.sqlite"
    client = TestClient(make_app(digits, db))
    assert client.get("/api/info").json()["suggestions"] is None
    assert client.get("/api/suggestions").status_code == 404
    assert client.post("/api/feedback", json=event(digits["names"][:2], action="deselect")).status_code == 200
    client = TestClient(make_app(digits, db, suggest=suggest))
    assert seen["judged"] == set(digits["names"][:2])
    answer = client.get("/api/suggestions").json()
    assert answer["total"] == 5 == client.get("/api/info").json()["suggestions"]
    first = answer["results"][0]
    assert first["image"] == digits["names"][2] and first["id"] == 2 and first["rank"] == 1
    assert first["query_class"] == "even" and first["predicted"] == "even" and first["score"] == 0.01


def test_suggestions_of_a_model_of_other_classes_are_refused(digits, tmp_path):
    def suggest(names, judged):
        return [{"rank": 1, "image": names[0], "score": 0.0, "query_class": "cat", "probability": 0.5, "predicted": "cat"}]

    with pytest.raises(Exception, match="do not match"):
        make_app(digits, tmp_path / "feedback.sqlite", suggest=suggest)


def test_a_suggestions_csv_is_served_without_its_judged_rows_and_one_of_another_folder_is_refused(digits, tmp_path):
    from image_toolkit.data_tools.feedback.suggest import listed_suggester

    names = digits["names"]
    path = tmp_path / "suggestions.csv"
    rows = [f"{rank},{name},{0.1 * rank:.1f},even,0.5,odd" for rank, name in enumerate([names[3], "elsewhere.png", *names[:3]], 1)]
    path.write_text("rank,image,score,query_class,probability,predicted\n" + "\n".join(rows) + "\n")
    db = tmp_path / "feedback.sqlite"
    client = TestClient(make_app(digits, db))
    assert client.post("/api/feedback", json=event(names[:1], action="deselect")).status_code == 200
    answer = TestClient(make_app(digits, db, suggest=listed_suggester(path, n=2))).get("/api/suggestions").json()
    assert answer["total"] == 2  # names[3] and names[1] (ranked 1 and 2 in the view): not the judged names[0] nor the unknown file, at most n
    assert [(row["image"], row["rank"], row["predicted"]) for row in answer["results"]] == [(names[3], 1, "odd"), (names[1], 2, "odd")]

    path.write_text("rank,image,score,query_class,probability,predicted\n1,photos/a.jpg,0.1,even,0.5,odd\n")
    with pytest.raises(Exception, match="none of its images"):
        make_app(digits, db, suggest=listed_suggester(path, n=2))
