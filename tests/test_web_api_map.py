"""The page's map API: info's classes and groups, the binary map and feedback states, the lasso selection.

Every expected number is computed here from the digits fixture of
tests/test_webapp.py (its label table and pixels), not by the app's code:
class texts joined by hand, a PCA by scikit-learn, the points inside a lasso
by a ray-casting loop.
"""

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from image_toolkit.data_tools.web import collection as web_collection  # noqa: E402
from tests import test_webapp  # noqa: E402
from tests.test_webapp import CLASSES, create_app, decode_map, event, make_app  # noqa: E402

# The fixtures of tests/test_webapp.py, shared (its 48 digits are built once per module that uses them).
digits, client = test_webapp.digits, test_webapp.client


def class_texts(table) -> list[str]:
    """Each image's class as the store registers multilabel data: its positive labels joined by ';'."""
    return [";".join(name for name in CLASSES if row[name] == 1) for _, row in table.iterrows()]


def inside(point, polygon) -> bool:
    """Ray casting: a ray to the right of the point crosses the polygon's edges an odd number of times."""
    x, y = point
    crossings = 0
    for (x0, y0), (x1, y1) in zip(polygon, polygon[1:] + polygon[:1]):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            crossings += 1
    return crossings % 2 == 1


def test_info_counts_classes_groups_examples_map_and_feedback(client, digits):
    texts = class_texts(digits["table"])
    counts = Counter(texts)
    info = client.get("/api/info").json()
    assert info["class_counts"] == {name: int((digits["table"][name] == 1).sum()) for name in CLASSES}
    assert info["groups"] == [{"name": t, "count": counts[t]} for t in sorted(counts, key=lambda t: (-counts[t], t))]
    assert info["examples"] == sorted(CLASSES, key=lambda name: -info["class_counts"][name])[:3]
    assert info["map"] == {"source": "pca", "points": 48, "message": None}
    assert info["feedback"] == {"events": 0, "images": 0}


def test_the_map_groups_are_the_positions_of_info_groups(client, digits):
    names = [group["name"] for group in client.get("/api/info").json()["groups"]]
    _, groups = decode_map(client.get("/api/map").content, 48)
    assert [names[g] for g in groups] == class_texts(digits["table"])


def test_more_class_texts_than_max_groups_share_other(client, digits, monkeypatch):
    """With MAX_GROUPS = 3, the two most frequent texts keep their code and every other image is 'other', code 2."""
    monkeypatch.setattr(web_collection, "MAX_GROUPS", 3)
    app_client = TestClient(make_app(digits, client.app.state.store.db))
    texts = class_texts(digits["table"])
    counts = Counter(texts)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    groups = app_client.get("/api/info").json()["groups"]
    assert groups == [{"name": ranked[0], "count": counts[ranked[0]]}, {"name": ranked[1], "count": counts[ranked[1]]},
                      {"name": "other", "count": 48 - counts[ranked[0]] - counts[ranked[1]]}]
    _, codes = decode_map(app_client.get("/api/map").content, 48)
    assert codes.tolist() == [ranked.index(t) if t in ranked[:2] else 2 for t in texts]


def test_an_image_the_store_does_not_know_is_group_65535(digits, tmp_path):
    root = digits["root"]
    (tmp_path / "labels.txt").write_text("\n".join((root / "label.txt").read_text().splitlines()[:-8]) + "\n")
    app = create_app(root / "index", root / "images", tmp_path / "f.sqlite", labels=tmp_path / "labels.txt")
    _, groups = decode_map(TestClient(app).get("/api/map").content, 48)
    assert (groups[40:] == 65535).all() and (groups[:40] < 65535).all()


def test_the_map_has_an_etag_and_answers_304(client):
    first = client.get("/api/map")
    assert first.headers["cache-control"] == "no-cache" and first.headers["etag"]
    again = client.get("/api/map", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/api/map", headers={"If-None-Match": '"other"'}).status_code == 200


def test_no_coordinates_and_too_many_images_for_pca_is_409_naming_the_commands(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(web_collection, "MAX_PCA_POINTS", 40)
    app_client = TestClient(make_app(digits, tmp_path / "f.sqlite"))
    info = app_client.get("/api/info").json()["map"]
    assert info["source"] is None and info["points"] is None
    for answer in (app_client.get("/api/map"), app_client.post("/api/map/select", json={"polygon": [[0, 0], [1, 0], [0, 1]]})):
        assert answer.status_code == 409 and answer.json()["detail"] == info["message"]
    assert "toolkit tsne" in info["message"] and "--map" in info["message"] and info["message"].count(".") >= 1


def test_states_are_the_net_session_votes_for_the_class(client, digits):
    names = digits["names"]
    assert client.post("/api/feedback", json=event(names[:3], "lasso", "prime")).status_code == 200
    assert client.post("/api/feedback", json=event([names[1]], "deselect", "prime")).status_code == 200
    assert client.post("/api/feedback", json=event([names[5]], "select", "even")).status_code == 200
    answer = client.get("/api/map/states", params={"query_class": "prime"})
    assert answer.headers["content-type"] == "application/octet-stream"
    states = np.frombuffer(answer.content, dtype=np.uint8)
    assert len(states) == 48 and states[:3].tolist() == [1, 2, 1] and states[3:].sum() == 0
    counts = client.get("/api/feedback/counts", params={"query_class": "prime"}).json()
    assert counts == {"events": 3, "images": 4, "confirmed": 2, "rejected": 1}
    assert client.get("/api/feedback/counts").json() == {"events": 3, "images": 4, "confirmed": 0, "rejected": 0}
    assert client.get("/api/info").json()["feedback"] == {"events": 3, "images": 4}


@pytest.mark.parametrize("url", ["/api/map/states", "/api/feedback/counts"])
def test_states_and_counts_of_an_unknown_class_are_422_naming_the_classes(client, url):
    answer = client.get(url, params={"query_class": "sofa"})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["msg"] == "no class 'sofa'; the classes are: even, prime, five_or_more, closed_loop."


def test_a_lasso_selects_exactly_the_points_inside_it(client, digits):
    coords, _ = decode_map(client.get("/api/map").content, 48)
    (x0, y0), (x1, y1) = coords.min(axis=0), coords.max(axis=0)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    # A star around the middle: concave, so a bounding-box test would select more.
    polygon = [[float(cx + (rx if i % 2 == 0 else rx / 3) * np.cos(a)), float(cy + (ry if i % 2 == 0 else ry / 3) * np.sin(a))]
               for i, a in enumerate(np.linspace(0, 2 * np.pi, 10, endpoint=False))]
    expected = [i for i, point in enumerate(coords.tolist()) if inside(point, polygon)]
    assert 3 < len(expected) < 40
    answer = client.post("/api/map/select", json={"polygon": polygon}).json()
    assert answer == {"count": len(expected), "ids": expected, "truncated": False}
    even = [i for i in expected if digits["table"]["even"][i] == 1]
    assert client.post("/api/map/select", json={"polygon": polygon, "class": "even"}).json()["ids"] == even


def test_a_lasso_of_more_images_than_an_event_takes_is_truncated(client, monkeypatch):
    from image_toolkit.data_tools.web import app as web

    monkeypatch.setattr(web, "MAX_EVENT_IMAGES", 5)
    everything = [[-1e6, -1e6], [1e6, -1e6], [1e6, 1e6], [-1e6, 1e6]]
    assert client.post("/api/map/select", json={"polygon": everything}).json() == {"count": 48, "ids": [0, 1, 2, 3, 4],
                                                                                   "truncated": True}


@pytest.mark.parametrize("polygon, reason", [
    ([[0, 0], [1, 1]], "a lasso needs at least 3 points; received 2."),
    ([], "a lasso needs at least 3 points; received 0."),
])
def test_a_lasso_with_fewer_than_3_points_is_422(client, polygon, reason):
    answer = client.post("/api/map/select", json={"polygon": polygon})
    assert answer.status_code == 422 and answer.json()["detail"][0]["msg"] == reason


@pytest.mark.parametrize("body", [
    '{"polygon": [[0, 0], [1, NaN], [0, 1]]}',
    '{"polygon": [[0, 0], [1, Infinity], [0, 1]]}',
    '{"polygon": [[0, 0, 0], [1, 0], [0, 1]]}',
])
def test_a_lasso_with_non_finite_or_malformed_vertices_is_422(client, body):
    answer = client.post("/api/map/select", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text


def test_a_lasso_of_an_unknown_class_is_422(client):
    answer = client.post("/api/map/select", json={"polygon": [[0, 0], [1, 0], [0, 1]], "class": "sofa"})
    assert answer.status_code == 422 and "no class 'sofa'; the classes are: even, prime" in answer.json()["detail"][0]["msg"]
