"""The page's other API: browsing, the class filter on every search, messages for a browser user, caching at scale.

On the digits fixture of tests/test_webapp.py; each expected ranking is
computed here in plain numpy from its pixels, class scores and labels.
"""

import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from image_toolkit.data_tools.web import app as web  # noqa: E402
from image_toolkit.data_tools.web import collection as web_collection  # noqa: E402
from tests import test_webapp  # noqa: E402
from tests.test_webapp import CLASSES, create_app, make_app  # noqa: E402

digits, client = test_webapp.digits, test_webapp.client


def class_text(table, i: int) -> str:
    return ";".join(name for name in CLASSES if table[name][i] == 1)


def cosine_top(features, query, k, keep=None):
    """The k best rows by cosine similarity to the query (ties by id), only those in `keep` when given."""
    units = features / np.linalg.norm(features, axis=1, keepdims=True)
    scores = units @ (query / np.linalg.norm(query))
    ids = [i for i in sorted(range(len(features)), key=lambda i: (-scores[i], i)) if keep is None or keep[i]]
    return ids[:k]


def test_browse_pages_through_the_collection_in_index_order(client, digits):
    table = digits["table"]
    page = client.get("/api/images", params={"offset": 40, "limit": 5}).json()
    assert page["total"] == 48 and page["offset"] == 40
    assert [(r["rank"], r["id"], r["image"], r["class"], r["score"]) for r in page["results"]] == [
        (41 + j, 40 + j, digits["names"][40 + j], class_text(table, 40 + j), None) for j in range(5)]
    prime = [i for i in range(48) if table["prime"][i] == 1]
    page = client.get("/api/images", params={"offset": 2, "limit": 3, "class": "prime"}).json()
    assert page["total"] == len(prime) and [r["id"] for r in page["results"]] == prime[2:5]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": web.MAX_K + 1}, {"offset": -1}])
def test_browse_refuses_a_limit_out_of_range(client, params):
    assert client.get("/api/images", params=params).status_code == 422


def test_every_result_carries_its_class_text(client, digits):
    table = digits["table"]
    for answer in (client.get("/api/search", params={"q": "even", "k": 6}).json(),
                   client.post("/api/search/refine", json={"query": {"id": 3}, "k": 6}).json()):
        assert [r["class"] for r in answer["results"]] == [class_text(table, r["id"]) for r in answer["results"]]


def test_the_class_filter_ranks_only_that_class_by_the_same_scores(client, digits):
    table, scores, features = digits["table"], digits["scores"], digits["features"]
    closed = (table["closed_loop"] == 1).to_numpy()
    keyword = client.get("/api/search", params={"q": "even", "k": 5, "class": "closed_loop"}).json()
    expected = [i for i in np.lexsort((np.arange(48), -scores[:, 0])) if closed[i]][:5]
    assert [r["id"] for r in keyword["results"]] == expected
    refined = client.post("/api/search/refine", json={"query": {"id": 3}, "k": 5, "class": "closed_loop"}).json()
    assert [r["id"] for r in refined["results"]] == cosine_top(features, features[3], 5, closed)
    name = digits["names"][7]
    content = (digits["root"] / "images" / name).read_bytes()
    uploaded = client.post("/api/search/image", files={"file": ("q.png", content, "image/png")},
                           params={"k": 5, "class": "closed_loop"}).json()
    assert [r["id"] for r in uploaded["results"]] == cosine_top(features, features[7], 5, closed)


def test_a_rare_class_is_ranked_by_scoring_its_own_rows(client, digits, monkeypatch):
    """Past MAX_SEARCH_K neighbours the index is not asked again: the class's rows are scored, with the same answer."""
    features, closed = digits["features"], (digits["table"]["closed_loop"] == 1).to_numpy()
    monkeypatch.setattr(web_collection, "MAX_SEARCH_K", 1)
    index = client.app.state.collection.index
    monkeypatch.setattr(index, "search", None)  # Must not be called.
    refined = client.post("/api/search/refine", json={"query": {"id": 3}, "k": 5, "class": "closed_loop"}).json()
    assert [r["id"] for r in refined["results"]] == cosine_top(features, features[3], 5, closed)


@pytest.mark.parametrize("request_", [
    ("get", "/api/search", {"params": {"q": "even", "class": "sofa"}}),
    ("get", "/api/images", {"params": {"class": "sofa"}}),
    ("post", "/api/search/refine", {"json": {"query": {"id": 0}, "class": "sofa"}}),
    ("post", "/api/search/image", {"params": {"class": "sofa"}, "files": {"file": ("q.png", b"x", "image/png")}}),
], ids=["search", "browse", "refine", "image"])
def test_a_class_filter_naming_an_unknown_class_is_422(client, request_):
    method, url, kwargs = request_
    answer = getattr(client, method)(url, **kwargs)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["msg"] == "no class 'sofa'; the classes are: even, prime, five_or_more, closed_loop."


def test_a_refine_with_ids_not_in_the_index_is_404_naming_the_id_and_the_range(client):
    answer = client.post("/api/search/refine", json={"query": {"id": 0}, "deselected": [2, 48]})
    assert answer.status_code == 404
    assert answer.json()["detail"] == "deselected: image id 48 is not in the index; the ids are 0 to 47."


def test_a_keyword_matching_nothing_is_told_in_browser_words(client):
    answer = client.get("/api/search", params={"q": "sofa"})
    assert answer.status_code == 404
    assert answer.json()["detail"] == "no class matches 'sofa'; try one of: even, prime, five_or_more, closed_loop."
    for q in ("sofa", "kitchen table"):
        assert "--" not in client.get("/api/search", params={"q": q}).json()["detail"]


def test_a_learned_keyword_with_nothing_confirmed_names_no_flag(digits, tmp_path):
    root = digits["root"]
    app_client = TestClient(create_app(root / "index", root / "images", tmp_path / "f.sqlite", labels=root / "label.txt"))
    answer = app_client.get("/api/search", params={"q": "even"})
    assert answer.status_code == 404 and "--" not in answer.json()["detail"] and "lasso" in answer.json()["detail"]


# Served at scale.


def test_images_and_thumbnails_carry_etags_and_answer_304(client):
    for url, age in (("/api/images/0", web.IMAGE_MAX_AGE_S), ("/api/thumbnails/0", web.THUMBNAIL_MAX_AGE_S)):
        first = client.get(url)
        assert first.status_code == 200 and first.headers["cache-control"] == f"max-age={age}"
        again = client.get(url, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b"", url


def copy_images(digits, folder):
    """The digits' index and a copy of their image folder, so a test may change files."""
    import shutil

    shutil.copytree(digits["root"] / "images", folder)
    return folder


def test_a_thumbnail_is_served_from_the_disk_cache_by_a_second_app(digits, tmp_path, monkeypatch):
    """A second app over the same folder serves the kept thumbnail without opening the image; a changed image gets a new one."""
    root, images = digits["root"], copy_images(digits, tmp_path / "images")
    cache = tmp_path / "thumbs"

    def served(db):
        return TestClient(create_app(root / "index", images, tmp_path / db, labels=root / "label.txt", thumbnail_dir=cache))

    first = served("a.sqlite").get("/api/thumbnails/5")
    assert first.status_code == 200 and len(list(cache.rglob("*.png"))) == 1 and not list(cache.rglob("*.tmp"))
    opened = []
    real_open = web.open_image
    monkeypatch.setattr(web, "open_image", lambda *args, **kwargs: opened.append(args) or real_open(*args, **kwargs))
    second = served("b.sqlite")
    again = second.get("/api/thumbnails/5")
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"] and opened == []
    path = images / digits["names"][5]
    Image.new("L", (32, 32), 255).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    changed = second.get("/api/thumbnails/5")
    assert changed.headers["etag"] != first.headers["etag"] and changed.content != first.content and len(opened) == 1
    assert np.asarray(Image.open(__import__("io").BytesIO(changed.content))).min() == 255


def test_start_up_samples_the_image_folder_and_still_refuses_one_missing_every_sampled_image(digits, tmp_path, monkeypatch):
    root = digits["root"]
    checked = []
    real_file = web_collection.Collection.file
    monkeypatch.setattr(web_collection, "IMAGE_CHECK_SAMPLE", 10)
    monkeypatch.setattr(web_collection.Collection, "file", lambda self, i: checked.append(i) or real_file(self, i))
    create_app(root / "index", root / "images", tmp_path / "a.sqlite", labels=root / "label.txt")
    assert len(checked) == 10 and checked[0] == 0 and checked[-1] == 47
    images = copy_images(digits, tmp_path / "images")
    for i in checked:
        (images / digits["names"][i]).unlink()
    with pytest.raises(web.DataError, match="holds none of the 10 indexed images looked for \\(of 48\\)"):
        create_app(root / "index", images, tmp_path / "b.sqlite", labels=root / "label.txt")


def test_start_up_reads_no_n_by_d_copy_of_the_features(digits, tmp_path, monkeypatch):
    """The index's rows are read by id on demand: `vectors` (all N x D) is never called, at start or by a request."""
    from image_toolkit.data_tools.search.index import ImageIndex

    monkeypatch.setattr(ImageIndex, "vectors", None)
    app = make_app(digits, tmp_path / "f.sqlite")
    app_client = TestClient(app)
    assert app_client.post("/api/search/refine", json={"query": {"id": 3}, "selected": [4], "k": 3}).status_code == 200
    assert app_client.get("/api/map").status_code == 200
    assert not hasattr(app.state.collection, "features")
