"""`toolkit serve` against a careful attacker and an unlucky user: limits, hosts, tokens, locks and bad start-ups.

Each test drives the app in process (FastAPI's test client, or the ASGI
callable itself where the client would read a whole body first) on a few
32-px digits; the command's tests patch `uvicorn.run`, so no server starts.
"""

import asyncio
import contextlib
import socket
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from image_toolkit.cli.main import toolkit  # noqa: E402
from image_toolkit.data_tools.feedback import store as feedback_store  # noqa: E402
from image_toolkit.data_tools.formats.features import FeatureSet  # noqa: E402
from image_toolkit.data_tools.make_demo_data import write_digits_dataset  # noqa: E402
from image_toolkit.data_tools.search.index import ImageIndex  # noqa: E402
from image_toolkit.data_tools.web import app as web  # noqa: E402
from tests.conftest import one_line_error  # noqa: E402

LIMIT = 20_000
CHUNK = 4096


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """12 digits, an index of random rows, their labels: what `toolkit serve` needs."""
    root = tmp_path_factory.mktemp("served")
    table = write_digits_dataset(root, n_images=12, image_size=32, blank_fraction=0.0, seed=3)
    names = table["image"].tolist()
    rows = np.random.default_rng(0).random((12, 8)).astype(np.float32)
    ImageIndex(kind="flat").fit(FeatureSet(names, rows, {"model": "random"})).save(root / "index")
    return {"root": root, "names": names}


def make_app(served, db: Path, **settings):
    root = served["root"]
    settings = {"allowed_hosts": ["testserver"], "max_upload_bytes": LIMIT, "embed": lambda paths: np.ones((1, 8)), **settings}
    return web.create_app(root / "index", root / "images", db, labels=root / "label.txt", **settings)


def event(images, **extra):
    return {"user": "ann", "session": "s1", "timestamp": "2024-05-01T12:30:00Z", "query_class": "even",
            "action": "lasso", "images": images, **extra}


def png_header(width: int, height: int) -> bytes:
    """A valid PNG header of a 1-bit image of any size with only a few rows of data: a tiny file, a huge image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (width // 8 + 2) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


# Uploads.


def stream(app, path: str, body_chunks, content_type: bytes) -> tuple[int, int]:
    """POST a body to the ASGI app chunk by chunk with no Content-Length; (status, bytes the app pulled)."""
    chunks, pulled, statuses = iter(body_chunks), [0], []

    async def receive():
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled[0] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "client": ("127.0.0.1", 9),
             "server": ("127.0.0.1", 8000), "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", content_type),
                                                        (b"transfer-encoding", b"chunked")]}
    asyncio.run(app(scope, receive, send))
    return statuses[0], pulled[0]


@pytest.mark.parametrize("path, content_type, head, limit", [
    ("/api/search/image", b"multipart/form-data; boundary=XyZ",
     b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n',
     LIMIT + web.MULTIPART_OVERHEAD),
    ("/api/feedback", b"application/json", b'{"user": "', web.MAX_BODY_BYTES),
], ids=["upload", "json"])
def test_a_chunked_body_with_no_length_is_cut_off_at_the_limit(served, tmp_path, path, content_type, head, limit):
    """8 MiB sent in 4 KiB chunks: a 413, and the app never pulls more than one chunk past the limit."""
    app = make_app(served, tmp_path / "f.sqlite")
    status, pulled = stream(app, path, [head] + [b"u" * CHUNK] * (8 * 1024 * 1024 // CHUNK), content_type)
    assert status == 413 and pulled <= limit + CHUNK, pulled


def test_a_json_body_over_the_limit_is_refused_unread(served, tmp_path):
    client = TestClient(make_app(served, tmp_path / "f.sqlite"))
    answer = client.post("/api/feedback", content=b"[" + b"0," * web.MAX_BODY_BYTES + b"0]",
                         headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "request body limit" in answer.json()["detail"]


@pytest.mark.parametrize("size", [12_000, 40_000])
def test_a_decompression_bomb_upload_is_413_before_decoding(served, tmp_path, size):
    """A few-KB PNG of 12000 x 12000 (Pillow only warns) or 40000 x 40000 (Pillow raises) pixels: 413, never a 500."""
    client = TestClient(make_app(served, tmp_path / "f.sqlite"), raise_server_exceptions=False)
    bomb = png_header(size, size)
    assert len(bomb) < LIMIT
    answer = client.post("/api/search/image", files={"file": ("bomb.png", bomb, "image/png")})
    assert answer.status_code == 413, answer.text
    assert f"{web.MAX_PIXELS:,}" in answer.json()["detail"]


@pytest.mark.parametrize("size", [12_000, 40_000])
def test_a_decompression_bomb_in_the_index_has_no_thumbnail(served, tmp_path, size):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bomb.png").write_bytes(png_header(size, size))
    ImageIndex(kind="flat").fit(FeatureSet(["bomb.png"], np.ones((1, 4), np.float32), {"model": "x"})).save(tmp_path / "index")
    app = web.create_app(tmp_path / "index", tmp_path / "images", tmp_path / "f.sqlite", labels=served["root"] / "label.txt",
                         allowed_hosts=["testserver"])
    answer = TestClient(app, raise_server_exceptions=False).get("/api/thumbnails/0")
    assert answer.status_code == 422, answer.text
    assert "bomb.png" in answer.json()["detail"][0]["msg"] and f"{web.MAX_PIXELS:,}" in answer.json()["detail"][0]["msg"]


# Event fields.


@pytest.mark.parametrize("change", [
    {"images": ["x" * (web.MAX_IMAGE_NAME_LENGTH + 1)]},
    {"images": ["0000.png"] * (web.MAX_EVENT_IMAGES + 1)},
], ids=["long-name", "long-list"])
def test_every_event_field_has_a_size_limit(served, tmp_path, change):
    client = TestClient(make_app(served, tmp_path / "f.sqlite"))
    answer = client.post("/api/feedback", json={**event(["0000.png"]), **change})
    assert answer.status_code == 422 and answer.json()["detail"][0]["type"] in ("string_too_long", "too_long")


@pytest.mark.parametrize("body", [
    '{"query": {"id": 0}, "selected": [NaN]}',
    '{"query": {"id": 0}, "k": Infinity}',
    '{"query": {"vector": [1e309]}}',
])
def test_non_finite_numbers_anywhere_in_a_body_are_422(served, tmp_path, body):
    client = TestClient(make_app(served, tmp_path / "f.sqlite"), raise_server_exceptions=False)
    answer = client.post("/api/search/refine", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert isinstance(answer.json()["detail"], list)


# Hosts and the token.


def test_only_the_bound_host_and_loopback_names_are_answered(served, tmp_path):
    """A DNS-rebinding page sends its own name as Host: it gets a 400, not the feedback export."""
    db = tmp_path / "f.sqlite"
    for bound, answered, refused in (("127.0.0.1", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"],
                                      ["evil.example", "evil.example:8000", "10.1.2.3"]),
                                     ("10.1.2.3", ["10.1.2.3:8000", "localhost"], ["10.1.2.4:8000", "testserver"])):
        client = TestClient(make_app(served, db, host=bound, allowed_hosts=()))
        for host in answered:
            assert client.get("/api/feedback/export", headers={"host": host}).status_code == 200, (bound, host)
        for host in refused:
            answer = client.get("/api/feedback/export", headers={"host": host})
            assert answer.status_code == 400 and "image,class" not in answer.text, (bound, host)


def test_with_a_token_every_api_request_needs_it(served, tmp_path):
    client = TestClient(make_app(served, tmp_path / "f.sqlite", token="s3cret"), follow_redirects=False)
    assert client.get("/api/info").status_code == 401 and client.get("/api/thumbnails/0").status_code == 401
    assert client.get("/api/info", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/info", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/api/feedback", json=event(["0000.png"])).status_code == 401
    assert client.get("/").status_code == 200  # The page itself holds nothing; it says what is missing.
    opened = client.get("/?token=s3cret")
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    assert "httponly" in opened.headers["set-cookie"].lower() and "samesite=strict" in opened.headers["set-cookie"].lower()
    assert client.get("/api/info").status_code == 200  # The cookie, as the page's fetches and images send it.
    assert "401" in client.get("/openapi.json").json()["paths"]["/api/info"]["get"]["responses"]


# The feedback store locked by an import.


def test_a_locked_store_answers_503_with_retry_after_and_a_retry_stores_the_event_once(served, tmp_path):
    db = tmp_path / "f.sqlite"
    client = TestClient(make_app(served, db, wait=0.05))
    body = event(["0000.png"], id="page-1")
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as importer:
        importer.execute("BEGIN IMMEDIATE")  # What a long `feedback import` holds.
        busy = client.post("/api/feedback", json=body)
        importer.execute("COMMIT")
    assert busy.status_code == 503 and busy.headers["retry-after"] == str(web.RETRY_AFTER_S)
    assert client.post("/api/feedback", json=body).json() == {"id": "page-1", "added": True}
    assert client.post("/api/feedback", json=body).json() == {"id": "page-1", "added": False}


@pytest.mark.parametrize("failure", [
    sqlite3.OperationalError("attempt to write a readonly database"),
    feedback_store.DataError("f.sqlite: cannot write here (Read-only file system); choose a writable folder for --db."),
])
def test_a_store_that_cannot_be_written_is_507_not_a_retry_or_a_500(served, tmp_path, monkeypatch, failure):
    """Only a lock is worth a retry: a read-only or vanished store answers 507 with the reason, once."""
    client = TestClient(make_app(served, tmp_path / "f.sqlite"))

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(feedback_store, "check_event", fail)
    answer = client.post("/api/feedback", json=event(["0000.png"], id="page-1"))
    assert answer.status_code == 507 and "retry-after" not in answer.headers
    assert "read" in answer.json()["detail"].lower()


# The command.


@pytest.fixture
def no_server(monkeypatch):
    """`uvicorn.run` recorded instead of run: what serve would have served, and how."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    return calls


def serve_args(served, *extra):
    root = served["root"]
    return ["serve", str(root / "index"), "--images", str(root / "images"), "--labels", str(root / "label.txt"), *extra]


def test_a_port_in_use_is_one_line_before_serving(runner, served, tmp_path, no_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(toolkit, serve_args(served, "--db", str(tmp_path / "f.sqlite"), "--port", str(port)))
    assert result.exit_code == 1 and f"127.0.0.1:{port}: cannot listen there" in one_line_error(result)
    assert "Serving" not in result.output and no_server == [] and not (tmp_path / "f.sqlite").exists()


def test_a_network_host_warns_in_one_line_and_takes_a_token(runner, served, tmp_path, no_server):
    args = serve_args(served, "--db", str(tmp_path / "f.sqlite"), "--host", "0.0.0.0", "--port", "0")
    result = runner.invoke(toolkit, args)
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and "no authentication" in warning[0] and "--token" in warning[0] and "--allow-host" in warning[0]
    result = runner.invoke(toolkit, args, env={"IMAGE_TOOLKIT_TOKEN": "s3cret"})
    assert result.exit_code == 0 and "needs the token" in result.stderr and "s3cret" not in result.output
    client = TestClient(no_server[-1][0], base_url="http://localhost")
    assert client.get("/api/info").status_code == 401
    assert client.get("/api/info", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert no_server[-1][1]["access_log"] is False  # The access log would print `GET /?token=s3cret`.
    assert no_server[0][1]["access_log"] is True
    result = runner.invoke(toolkit, serve_args(served, "--db", str(tmp_path / "f.sqlite"), "--port", "0"))
    assert result.exit_code == 0 and "Warning" not in result.stderr  # This machine only: no warning.


def test_thumbnails_are_kept_beside_the_db_or_in_the_thumbnail_cache(runner, served, tmp_path, no_server):
    for extra, folder in (([], tmp_path / "f.thumbnails"), (["--thumbnail-cache", str(tmp_path / "t")], tmp_path / "t")):
        result = runner.invoke(toolkit, serve_args(served, "--db", str(tmp_path / "f.sqlite"), "--port", "0", *extra))
        assert result.exit_code == 0, result.output
        assert not folder.exists()  # Made on the first thumbnail written.
        assert TestClient(no_server[-1][0], base_url="http://localhost").get("/api/thumbnails/0").status_code == 200
        assert len(list(folder.rglob("*.png"))) == 1


def test_an_image_folder_with_none_of_the_indexed_images_is_one_line(runner, served, tmp_path, no_server):
    (tmp_path / "other").mkdir()
    root = served["root"]
    result = runner.invoke(toolkit, ["serve", str(root / "index"), "--images", str(tmp_path / "other"), "--port", "0",
                                     "--labels", str(root / "label.txt"), "--db", str(tmp_path / "f.sqlite")])
    assert result.exit_code == 1 and "holds none of the 12 indexed images" in one_line_error(result)
    assert no_server == [] and not (tmp_path / "f.sqlite").exists()


def test_an_image_folder_with_some_of_the_indexed_images_warns_with_the_count(served, tmp_path, caplog):
    import shutil

    shutil.copytree(served["root"] / "images", tmp_path / "images")
    for name in served["names"][:5]:
        (tmp_path / "images" / name).unlink()
    with caplog.at_level("WARNING", logger=web.__name__):
        web.create_app(served["root"] / "index", tmp_path / "images", tmp_path / "f.sqlite", labels=served["root"] / "label.txt")
    assert "5 of the 12 indexed images are not in this folder" in caplog.text


def test_an_unusable_db_or_label_file_is_one_line_and_leaves_no_store(runner, served, tmp_path, no_server):
    (tmp_path / "wrong.csv").write_text("name,even\n0000.png,1\n")
    result = runner.invoke(toolkit, ["serve", str(served["root"] / "index"), "--images", str(served["root"] / "images"),
                                     "--labels", str(tmp_path / "wrong.csv"), "--db", str(tmp_path / "f.sqlite"), "--port", "0"])
    assert result.exit_code == 1 and "no 'image' column" in one_line_error(result) and not (tmp_path / "f.sqlite").exists()
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc, a folder no one can create files in, not even root")
    result = runner.invoke(toolkit, serve_args(served, "--db", "/proc/fb.sqlite", "--port", "0"))
    assert result.exit_code == 1 and "/proc: cannot write here" in one_line_error(result)
    assert no_server == []
