"""The web app of `toolkit serve`: search an image index, lasso and deselect, refine by Rocchio, store feedback.

`create_app` builds a FastAPI app (the `serve` extra) over three things a
user already has: an index folder (`toolkit index build`), the folder of the
images it names, and the SQLite feedback store (`image_toolkit.data_tools.feedback.store`).

API (JSON unless said; the schema is at /openapi.json). Ids are index row numbers.

- `GET  /api/info`: size, dim, metric, the store's `classes`, the defaults below, and for the page:
  `class_counts` ({label: indexed images carrying it}); `groups` ([{name, count}]: the
  distinct class texts of the indexed images as the store registers them, '' unknown, most
  frequent first, then by name; a group's position is its code in `/api/map`; at most
  `MAX_GROUPS`, the rest sharing the last, "other"); `examples` (up to 3 labels, the most
  frequent); `map` ({source: the --map file name | "pca" | null, points, message: why there is
  no map and the commands that make one}); `feedback` ({events, images} stored).
- `GET  /api/search?q=sofa&k=40&class=C`: keyword query (see "Keyword ranking").
- `POST /api/search/image?class=C`: multipart upload `file`, at most `max_upload_bytes`
  and `MAX_PIXELS` pixels; the image is embedded with the index's model. The answer carries the
  query's feature row (`query_vector`) for `refine`.
- `POST /api/search/refine`: `{"query": {"text": ..} | {"id": ..} | {"vector": [..]},
  "selected": [ids], "deselected": [ids], "k": 40, "class": C}`: Rocchio (`image_toolkit.data_tools.search.rocchio`)
  over the index features: q' = alpha q + beta mean(selected) - gamma mean(deselected).
  For a text query, q is the mean of its top-k results' rows, in the index
  metric's space (`rocchio.centroid`: normalised for cosine, as they are for euclidean and inner product).
  An id not in the index is a 404 naming it and the valid range.
- `class=C` on the three searches: only images carrying label C are ranked, by the same scores
  (the index is asked for more neighbours until k of C are found; a rare class has its own rows
  scored). Every result carries rank, id, image, `class` (its class text, '' unknown) and score.
- `GET  /api/images?offset=0&limit=40&class=C`: the collection in index order (the start page),
  `{"total", "offset", "results"}`, score null.
- `GET  /api/images/{id}`, `GET /api/thumbnails/{id}`: an indexed image by its
  row number, only from inside the image folder; never by a client's path. Both carry an ETag
  (the file's name, size and mtime_ns) and answer 304 to a matching If-None-Match;
  Cache-Control max-age `IMAGE_MAX_AGE_S` / `THUMBNAIL_MAX_AGE_S`. Thumbnails are kept in
  memory and, with `thumbnail_dir`, on disk (`ThumbnailFolder`), so a restart does not redo them.
- `GET  /api/map` (application/octet-stream): little-endian float32 x[N], then float32 y[N],
  then uint16 group[N] (`NO_GROUP`, 65535: an image the store does not know); NaN x and y: no
  point. The `--map` CSV of `toolkit tsne` (image,x,y), else a PCA of the index rows, streamed
  from the index and kept, when N is at most `MAX_PCA_POINTS`; above, a 409 saying how to make
  a map. Headers X-Map-Source, X-Map-Points, an ETag (304 on If-None-Match), Cache-Control no-cache.
- `GET  /api/map/states?query_class=C` (binary): uint8[N]: 0 not judged for C, 1 confirmed (net
  session votes > 0), 2 rejected (< 0).
- `POST /api/map/select`: `{"polygon": [[x, y], ...], "class": C}`, 3 to `MAX_LASSO_POINTS` finite
  vertices in the map's coordinates: `{"count", "ids": ascending, at most MAX_EVENT_IMAGES, "images": their
  names (what a feedback event lists), "truncated"}`,
  the images whose points lie inside (`matplotlib.path.Path.contains_points`); 409 without a map.
- `GET  /api/feedback/counts?query_class=C`: `{"events", "images", "confirmed", "rejected"}`
  (the last two by net session votes for C; 0 without C).
- An unknown class anywhere is a 422 naming the classes; messages are written for the person
  reading the page, never naming a command-line flag.
- `POST /api/feedback`: one event of the feedback store's schema; stored.
- `GET  /api/feedback/export`: the per-image CSV of `toolkit feedback export`.
- `GET  /docs` (Swagger UI) and `GET /redoc`: the API pages, served offline:
  their JavaScript and CSS come from this app (`/docs-assets/`), taken from
  the fastapi-offline package (the `serve` extra), by FastAPI's recipe for
  self-hosting the docs assets. (ReDoc still asks cdn.redoc.ly for its
  footer logo, and hides it when that fails.) Without the package they fall
  back to FastAPI's pages, which load the assets from a CDN: blank offline.

Exposure: the app answers only requests whose Host header names the bound
host, localhost, 127.0.0.1, ::1 or one of `allowed_hosts` (Starlette's
TrustedHostMiddleware, against DNS rebinding). With a `token`, every /api
request must carry it: `Authorization: Bearer TOKEN`, or the cookie that
opening `/?token=TOKEN` sets, so the page keeps working. Every request body
is counted as it arrives and cut off at its limit (`max_upload_bytes` for
uploads, `MAX_BODY_BYTES` for JSON), chunked or not; a locked feedback store
is a 503 with Retry-After, which the page retries with backoff.

Errors: `{"detail": "..."}`, but 422s have FastAPI's validation shape
(`{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`) whether FastAPI
or the app refused the request, so one schema describes them all.

Keyword ranking: when the index (or `scores`) holds class scores, an image's
score is the weighted sum of its scores for the classes the keyword names
(`image_toolkit.data_tools.search.keywords`). Learned queries: the keyword's query class is the
store's class it names; every image gains `learned_weight` x clip(net votes,
-1, 1) for it, where each user session that judged the image votes once, by
its latest judgement: -1 if that deselected the image, else +1 (lassoed or
selected). So confirmed images rank higher next time and rejected ones lower. Without class
scores, a keyword that names a store class ranks by the index's metric to the
mean (`rocchio.centroid`) of the images confirmed for it, plus the same bonus.

The store must know the data set (image -> class): pass `labels` (the label
CSV, as `toolkit feedback import --data-csv`) unless it already does.

Ranking: image and refine queries (the Rocchio q' included) are searched
through the loaded index (`Collection.nearest`), in its metric, and scored
larger-is-nearer: cosine similarity (1 - the index's distance), minus the
euclidean distance, or the inner product. A learned keyword without class
scores searches the index for the centroid, then re-scores only those
candidates and the voted images. Class scores (N x classes) are the one scan,
its top k taken by `np.argpartition` (`ranking.top_k`): no request copies
the N x D features or sorts all N.

Memory: the app keeps the index, which holds the rows (read by id for
Rocchio's means, a centroid's candidates and the PCA map: never an N x D
copy), the names, a class code and map group per image, the map, the class
scores when given, and up to `THUMBNAIL_CACHE` thumbnails. Start-up opens no
image file: the image-folder check looks for `IMAGE_CHECK_SAMPLE` names spread
over the index (`collection.py`).
"""

import hashlib
import hmac
import io
import ipaddress
import logging
import os
import sqlite3
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.errors import missing_extra as missing_extra_error
from image_toolkit.data_tools.feedback import store as feedback
from image_toolkit.data_tools.formats.background import background_name, has_alpha, to_rgb
from image_toolkit.data_tools.formats.labels import read_labels
from image_toolkit.data_tools.search import rocchio
from image_toolkit.data_tools.search.ranking import top_k
from image_toolkit.data_tools.web.collection import NO_GROUP, Classes, Collection

if TYPE_CHECKING:  # The serve extra is imported where it is used, so this module loads without it.
    from fastapi import HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from PIL import Image

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
DEFAULT_K = 40
MAX_K = 1000
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# JSON bodies (events, refine queries) are far smaller; this bounds what a client can make the server read.
MAX_BODY_BYTES = 4 * 1024 * 1024
# Largest image decoded, as an upload or a thumbnail: about an 8,000 x 6,000 photo (150 MB as RGB).
# Pillow's own limit is process-wide and only warns below 179 MP; this one is the app's and refuses before decoding.
MAX_PIXELS = 50_000_000
# An event's image list: at most ten pages of results; each name a relative path.
MAX_EVENT_IMAGES = 10 * MAX_K
MAX_IMAGE_NAME_LENGTH = 1024
# Seconds a client is told to wait before sending again when the feedback store is locked by an import.
RETRY_AFTER_S = 1
TOKEN_COOKIE = "image_toolkit_token"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# What an indexed image may be served as (`FileResponse` guesses it from the suffix).
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/tiff", "image/webp")
LEARNED_WEIGHT = 0.5
THUMBNAIL_SIZE = 128
# Thumbnails kept in memory; every one made is also kept on disk (`ThumbnailFolder`), so a restart does not redo them.
THUMBNAIL_CACHE = 4096
# Seconds a browser keeps an image or a thumbnail before asking again (then an ETag makes it a 304).
IMAGE_MAX_AGE_S = 3600
THUMBNAIL_MAX_AGE_S = 86400
# Vertices of a lasso: a hand-drawn path sampled at every mouse move; more is a client gone wrong.
MAX_LASSO_POINTS = 10_000
# A multipart upload carries a few hundred bytes of headers around the file.
MULTIPART_OVERHEAD = 64 * 1024
DOCS_ASSETS_URL = "/docs-assets"
# The package whose static folder holds swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png.
DOCS_ASSETS_PACKAGE = "fastapi_offline"
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
NO_DATA_SET = (
    "give --data-csv LABEL_CSV (the label file of the images, as for toolkit feedback import --data-csv) "
    "so feedback events have classes."
)


def missing_extra() -> str | None:
    """None when FastAPI, uvicorn and python-multipart are installed, else the pip line to install them."""
    import importlib.util

    if all(importlib.util.find_spec(name) for name in ("fastapi", "uvicorn", "multipart")):
        return None
    return str(missing_extra_error("toolkit serve", "FastAPI, uvicorn and python-multipart", "serve"))


def docs_assets_dir() -> Path | None:
    """The folder of Swagger UI's and ReDoc's JS and CSS shipped by fastapi-offline, or None without it.

    Only the package's files are used (found without importing it), not its
    app factory: the app serves them itself with FastAPI's documented recipe.
    """
    import importlib.util

    spec = importlib.util.find_spec(DOCS_ASSETS_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "static"
        if all((folder / name).is_file() for name in DOCS_ASSETS):
            return folder
    return None


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only: localhost or a loopback address."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def trusted_hosts(host: str, allowed_hosts: Sequence[str] = ()) -> list[str]:
    """The Host header values the app answers: the bound host, the loopback names and `allowed_hosts`.

    An IPv6 address is listed as a Host header writes it, in brackets.
    """
    names = []
    for name in (host, *LOOPBACK_HOSTS, *allowed_hosts):
        bare = name.strip("[]").lower()
        try:
            bracketed = ipaddress.ip_address(bare).version == 6
        except ValueError:
            bracketed = False
        names.append(f"[{bare}]" if bracketed else bare)
    return list(dict.fromkeys(names))


class TooManyPixels(DataError):
    """An image larger than the app decodes (`MAX_PIXELS`)."""


def open_image(source: str | os.PathLike | BinaryIO, *, max_pixels: int = MAX_PIXELS, what: str = "the image") -> "Image.Image":
    """Open an image for its header only; TooManyPixels when it is over `max_pixels`, before any pixel is decoded.

    Pillow's own bomb check, at twice its process-wide limit, is turned into
    the same error, and its warning below that is silenced: this limit is lower.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError:
        raise TooManyPixels(f"{what} has more than {max_pixels:,} pixels, the most this server decodes.") from None
    if image.width * image.height > max_pixels:
        image.close()
        raise TooManyPixels(f"{what} is {image.width:,} x {image.height:,} pixels, over the limit of {max_pixels:,}.")
    return image


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before sending the request again.",
                               "schema": {"type": "integer"}}}
# The error answers of the API, for its OpenAPI `responses`; every one has a `{"detail": "..."}` body.
ERROR_RESPONSES = {
    400: {"description": "The Host header names none of the hosts this server answers (as text/plain), "
                         "or an uploaded image cannot be embedded by this server.",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
    401: {"description": "No token, or a wrong one: send `Authorization: Bearer TOKEN` or open /?token=TOKEN once."},
    404: {"description": "No such image id, or no class matches the keyword."},
    409: {"description": "The event's id already holds another event."},
    413: {"description": "The request body, the upload or its pixel count is over the server's limit."},
    415: {"description": "The upload is not an image."},
    503: {"description": "The feedback store is locked by another writer (e.g. an import); send again after Retry-After.",
          "headers": RETRY_AFTER},
    507: {"description": "The feedback store cannot be written (its file or folder is read-only, gone, or the disk full); "
                         "sending again does not help until the server's operator fixes it."},
}


def busy(detail: str) -> "HTTPException":
    """The 503 of a locked feedback store, with Retry-After so a client (the page) knows when to send again."""
    from fastapi import HTTPException

    return HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


def finite(value: object) -> object:
    """`value` with every NaN or infinite float written as a string: JSON has no such numbers."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


async def validation_error(request: "Request", error: "RequestValidationError") -> "JSONResponse":
    """FastAPI's 422 answer, safe for a refused NaN or infinity echoed in `input` (its own handler answers 500)."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": finite(jsonable_encoder(error.errors()))}, status_code=422)


def thumbnail_png(path: Path, what: str, background: str | None = None, *, size: int | None = THUMBNAIL_SIZE) -> bytes:
    """A PNG of the image at most `size` px a side (None: as large as it is), transparency composited onto
    `background` (default white); DataError when it cannot be decoded or is over MAX_PIXELS."""
    try:
        with open_image(path, what=what) as picture:
            picture = to_rgb(picture, background)
            if size is not None:
                picture.thumbnail((size, size))
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
    except (OSError, ValueError) as error:  # Pillow's UnidentifiedImageError is an OSError.
        raise DataError(f"{what} cannot be decoded: {error}.") from None
    return buffer.getvalue()


class ThumbnailFolder:
    """Thumbnails on disk, one PNG per key (the image's name, size and mtime_ns hashed), so they outlive the server.

    The folder is made on the first thumbnail written. Each file is written
    under a temporary name and moved into place, so a reader (another
    server process) never sees half a PNG. A write that fails (a full or
    read-only disk) is logged and the thumbnail served anyway.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.png"

    def read(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except OSError:
            return None

    def write(self, key: str, content: bytes) -> None:
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".", suffix=".tmp", delete=False) as handle:
                handle.write(content)
            os.replace(handle.name, target)
        except OSError as error:
            logger.warning("%s: cannot keep a thumbnail there (%s); thumbnails are made again after a restart.",
                           self.folder, error.strerror or error)


def add_offline_docs(app, assets: Path) -> None:
    """`/docs` and `/redoc` over the JS and CSS in `assets`, mounted at `DOCS_ASSETS_URL`: no CDN, no fonts.

    FastAPI's "Self-hosting JavaScript and CSS for docs" recipe; the app is
    made with docs_url=None and redoc_url=None so these replace its pages.
    """
    from fastapi import Request
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.staticfiles import StaticFiles

    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    def url(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '')}{path}"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request):
        return get_swagger_ui_html(
            openapi_url=url(request, app.openapi_url), title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=url(request, app.swagger_ui_oauth2_redirect_url),
            swagger_js_url=url(request, f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{DOCS_ASSETS_URL}/swagger-ui.css"),
            swagger_favicon_url=url(request, f"{DOCS_ASSETS_URL}/favicon.png"),
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(app.swagger_ui_oauth2_redirect_url, include_in_schema=False)
    def swagger_ui_redirect():
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request):
        return get_redoc_html(
            openapi_url=url(request, app.openapi_url), title=f"{app.title} - ReDoc",
            redoc_js_url=url(request, f"{DOCS_ASSETS_URL}/redoc.standalone.js"),
            redoc_favicon_url=url(request, f"{DOCS_ASSETS_URL}/favicon.png"), with_google_fonts=False,
        )


class Store:
    """The feedback store, one SQLite connection per server thread (SQLite's rule), in WAL mode."""

    def __init__(self, db: Path, *, labels=None, wait: float = feedback.DEFAULT_WAIT_S):
        self.db, self.wait, self._local = Path(db), wait, threading.local()
        if labels is None and not self.db.is_file():
            raise OptionError(f"{self.db}: no such feedback store; {NO_DATA_SET}")
        table = read_labels(labels) if labels is not None else None
        connection = feedback.connect(self.db, create=True, wait=wait)
        try:
            with feedback.reported(self.db, wait):  # A read-only or locked store is one line, not a traceback.
                if table is not None:
                    with feedback.transaction(connection):
                        feedback.register_dataset(connection, table, labels)
                self.images, classes, _ = feedback.registered(connection)
        finally:
            connection.close()
        self.classes = classes
        if not self.images:
            raise OptionError(f"{self.db}: no data set registered; {NO_DATA_SET}")
        self.known = self.images.keys()  # A view, not a set: a million names are not held twice.

    def connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = feedback.connect(self.db, wait=self.wait)
            # Safe in WAL mode: a crash of the app loses nothing committed; only a power cut could.
            connection.execute("PRAGMA synchronous = NORMAL")
            self._local.connection = connection
        return connection

    def add(self, raw: dict, source: str = "web") -> tuple[dict, bool]:
        """Check and store one event; (event, added). ValueError: invalid; EventConflict: the id holds another event."""
        from datetime import datetime, timezone

        event = feedback.check_event(raw, self.known, set(self.classes))
        with feedback.transaction(self.connection()) as connection:
            added = feedback.store_event(
                connection, event, source=source, imported_at=datetime.now(timezone.utc).isoformat(timespec="seconds")
            )
        return event, added

    def votes(self, query_class: str) -> dict[str, int]:
        """Net votes of every image for a class (`feedback.session_votes`: each session's latest judgement)."""
        return feedback.session_votes(self.connection(), query_class)

    def counts(self) -> dict[str, int]:
        """{"events": events stored, "images": distinct images they name}, from every source (web and imports)."""
        connection = self.connection()
        (events,) = connection.execute("SELECT COUNT(*) FROM events").fetchone()
        (images,) = connection.execute("SELECT COUNT(DISTINCT image) FROM event_images").fetchone()
        return {"events": int(events), "images": int(images)}


def query_class_for(keyword: str, classes: list[str]) -> str | None:
    """The store class a keyword names: the same name (any case), else the best class-name match, else None."""
    from image_toolkit.data_tools.search.keywords import match_classes

    lowered = {name.lower(): name for name in classes}
    if keyword.strip().lower() in lowered:
        return lowered[keyword.strip().lower()]
    try:
        return match_classes(keyword, classes)[0].name
    except (DataError, OptionError):
        return None


def create_app(
    index_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    db_path: str | os.PathLike = "feedback.sqlite",
    map_csv: str | os.PathLike | None = None,
    *,
    labels: str | os.PathLike | None = None,
    scores: str | os.PathLike | None = None,
    embed: Callable[[list[Path]], np.ndarray] | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    token: str | None = None,
    wait: float = feedback.DEFAULT_WAIT_S,
    alpha: float = rocchio.ALPHA,
    beta: float = rocchio.BETA,
    gamma: float = rocchio.GAMMA,
    learned_weight: float = LEARNED_WEIGHT,
    thumbnail_dir: str | os.PathLike | None = None,
    background: str | None = None,
    suggest: Callable[[list[str], set[str]], list[dict]] | None = None,
):
    """The FastAPI app of `toolkit serve` (module docstring: API, keyword ranking, learned queries).

    `embed` turns image files into feature rows like the index's; the caller
    passes it in (`toolkit serve` gives the model recorded in the index
    metadata, loaded on the first upload), since this package holds no
    network. Without it, image queries are refused.

    `host` is the address served on; the Host headers answered are it, the
    loopback names and `allowed_hosts` (a test client's "testserver", a name
    of this machine). `token`: see "Exposure" in the module docstring.
    `wait`: seconds a feedback post waits for an import's write lock before
    its 503. `thumbnail_dir`: the folder thumbnails are kept in (made on the
    first one written); None keeps them in memory only. `background`:
    what transparent images are composited onto in thumbnails (default: the
    index's features' own, else white). `suggest` ranks images for the
    "Review uncertain images" view: given the collection's names and those
    the store has feedback on, the rows of `toolkit suggest` (rank, image,
    score, query_class, probability, predicted); called once, here, so a
    model's errors show at start-up (`toolkit serve --suggest` passes the
    model's ranking in: this package runs no network).
    """
    from typing import Annotated

    from fastapi import Body, FastAPI, File, HTTPException, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, Response
    from pydantic import BaseModel, Field
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    check_range("max_upload_bytes", max_upload_bytes, low=1)
    for name, weight in (("alpha", alpha), ("beta", beta), ("gamma", gamma), ("learned_weight", learned_weight)):
        check_range(name, weight, low=0)
    collection = Collection(index_dir, images_dir, scores=scores, map_csv=map_csv)
    background = background_name(background or collection.metadata.get("background"))
    store = Store(Path(db_path), labels=labels, wait=wait)
    classes = Classes(collection.names, store.images, store.classes)
    thumbnails: OrderedDict[int, bytes] = OrderedDict()
    thumbnail_lock = threading.Lock()
    disk = ThumbnailFolder(thumbnail_dir) if thumbnail_dir is not None else None
    suggested = None
    if suggest is not None:
        judged_names = set(feedback.image_feedback(store.db, wait=wait)["image"]) if store.db.exists() else set()
        suggested = [row for row in suggest(list(collection.names), judged_names) if row["image"] in collection.ids]
        foreign = sorted({row["query_class"] for row in suggested} - set(store.classes))
        if foreign:
            raise DataError(f"--suggest: the model's classes do not match the feedback store's ({', '.join(foreign[:5])} "
                            f"unknown to {store.db}, which has {', '.join(store.classes)}); suggest with a model of this data set.")

    assets = docs_assets_dir()
    offline = {"docs_url": None, "redoc_url": None} if assets else {}
    class Message(BaseModel):
        detail: str

    def answers(*codes: int) -> dict:
        """The OpenAPI `responses` of an operation's error codes, each with the app's `{"detail": ...}` body."""
        return {code: {"model": Message, **ERROR_RESPONSES[code]} for code in codes}

    always = answers(400, 401) if token else answers(400)
    app = FastAPI(title="image-toolkit", version="1", description=__doc__,
                  responses=always, **offline)
    if assets:
        add_offline_docs(app, assets)
    else:
        logger.warning("/docs and /redoc load their scripts from a CDN and stay blank offline; "
                       "pip install fastapi-offline (in the serve extra) to serve them from this app.")

    # Added inside out: a request meets the Host check first, then the token, then the body limit.
    app.add_middleware(BodyLimit, upload_path="/api/search/image", max_upload_bytes=max_upload_bytes)
    if token:
        app.add_middleware(TokenGate, token=token)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts(host, allowed_hosts))

    ImageName = Annotated[str, Field(max_length=MAX_IMAGE_NAME_LENGTH)]
    ImageIds = Annotated[list[int], Field(max_length=len(collection.names))]

    class Event(BaseModel):
        user: str = Field(max_length=feedback.MAX_NAME_LENGTH)
        session: str = Field(max_length=feedback.MAX_NAME_LENGTH)
        timestamp: str = Field(max_length=64)
        query_class: str = Field(max_length=feedback.MAX_NAME_LENGTH)
        action: str = Field(max_length=16)
        images: list[ImageName] = Field(max_length=MAX_EVENT_IMAGES)
        id: str | None = Field(None, max_length=feedback.MAX_NAME_LENGTH)

    class TextQuery(BaseModel):
        text: str | None = Field(None, max_length=200)
        id: int | None = None
        vector: list[float] | None = Field(None, max_length=collection.dim)

    class Refine(BaseModel):
        query: TextQuery
        selected: ImageIds = Field(default_factory=list)
        deselected: ImageIds = Field(default_factory=list)
        k: int = Field(DEFAULT_K, ge=1, le=MAX_K)
        class_: str | None = Field(None, alias="class", max_length=feedback.MAX_NAME_LENGTH)

    Coordinate = Annotated[float, Field(allow_inf_nan=False)]

    class Lasso(BaseModel):
        polygon: list[tuple[Coordinate, Coordinate]] = Field(max_length=MAX_LASSO_POINTS)
        class_: str | None = Field(None, alias="class", max_length=feedback.MAX_NAME_LENGTH)

    def invalid(message: str, *where: str | int) -> RequestValidationError:
        """A 422 of the app's own in FastAPI's validation shape, so the schema's HTTPValidationError holds for all."""
        return RequestValidationError([{"loc": where, "msg": message, "type": "value_error"}])

    def results(ids, scores_=None, *, first: int = 1) -> list[dict]:
        """Result rows: rank, id, image, class text and score (None when browsing, which has no scores)."""
        scores_ = [None] * len(ids) if scores_ is None else [round(float(s), 6) for s in scores_]
        return [{"rank": rank, "id": int(i), "image": collection.names[i], "class": classes.text(i), "score": s}
                for rank, (i, s) in enumerate(zip(ids, scores_), start=first)]

    def carrying(label: str | None, where: str = "query") -> np.ndarray | None:
        """The images carrying `label` (boolean N), None without one; an unknown label is a 422 naming the classes."""
        if label is None:
            return None
        problem = classes.unknown(label)
        if problem:
            raise invalid(problem, where, "class")
        return classes.carrying(label)

    def the_map() -> tuple[np.ndarray, str]:
        """The map's coordinates and source; 409 with the way to make one when the collection is too large for PCA."""
        coords = collection.coords()
        if coords is None:
            raise HTTPException(409, collection.map_info()["message"])
        return coords

    def not_modified(request: Request, etag: str) -> bool:
        """Whether the client's If-None-Match names `etag` (weak or strong, or *): its copy is current."""
        given = [tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")]
        return etag in given or "*" in given

    def top(candidates: np.ndarray, scores_: np.ndarray, k: int):
        order = top_k(scores_, k)
        return candidates[order], scores_[order]

    def no_match(q: str) -> str:
        """A keyword matching nothing, told to a browser user with the words that would match."""
        from image_toolkit.data_tools.search.keywords import closest_names

        words = list(store.classes)
        spelled = {word.replace("_", " ") for word in words}  # Class scores' names are written with spaces.
        if collection.vocabulary is not None and not set(collection.vocabulary) <= spelled:
            words += [name for name in closest_names(q, collection.vocabulary) if name not in spelled]
        return f"no class matches '{q}'; try one of: {', '.join(words)}."

    def keyword_scores(q: str, k: int, within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str | None, list[dict]]:
        """Candidate ids (ascending) holding a keyword's top k, their scores, its query class and the classes matched.

        With class scores every image is a candidate (of `within`, when
        given). A learned keyword searches the index for the centroid of its
        confirmed images: the k + (voted images) nearest hold the k best
        unvoted ones, and every voted image is a candidate too, its score
        re-computed with the bonus.
        """
        from image_toolkit.data_tools.search.keywords import match_classes

        query_class = query_class_for(q, store.classes)
        votes = store.votes(query_class) if query_class else {}
        voted = {collection.ids[image]: count for image, count in votes.items() if image in collection.ids}
        voted_ids = np.array(sorted(voted), dtype=np.int64)
        net = np.array([voted[i] for i in voted_ids.tolist()], dtype=np.float32)
        if within is not None:
            keep = within[voted_ids]
            voted_ids, net = voted_ids[keep], net[keep]
        matched, matches = [], None
        if collection.vocabulary is not None:
            try:
                matches = match_classes(q, collection.vocabulary)
            except (DataError, OptionError):
                if query_class is None:
                    raise HTTPException(404, no_match(q)) from None
        if matches:
            columns = np.array([m.index for m in matches])
            weights = np.array([m.weight for m in matches], dtype=np.float32)
            candidates = np.arange(collection.size) if within is None else np.flatnonzero(within)
            base = collection.class_scores[candidates][:, columns] @ weights if within is not None \
                else collection.class_scores[:, columns] @ weights
            matched = [{"name": m.name, "weight": m.weight} for m in matches]
            base[np.searchsorted(candidates, voted_ids)] += learned_weight * np.clip(net, -1, 1)
            return candidates, base, query_class, matched
        elif query_class is None:
            raise HTTPException(404, no_match(q))
        elif (net > 0).any():
            centroid = collection.centroid(voted_ids[net > 0])
            near, near_scores = collection.nearest(centroid, k + len(voted_ids), within=within)
            # The voted rows' scores as the index would give them: the same metric, on those rows only.
            voted_scores = rocchio.similarities(centroid, collection.rows(voted_ids), metric=collection.metric)
            voted_scores += learned_weight * np.clip(net, -1, 1)
            unvoted = ~np.isin(near, voted_ids)
            candidates = np.concatenate([near[unvoted], voted_ids])
            base = np.concatenate([near_scores[unvoted], voted_scores])
            order = np.argsort(candidates, kind="stable")
            return candidates[order], base[order], query_class, matched
        else:
            raise HTTPException(
                404, f"nothing is known about '{q}' yet: no image is confirmed for it. Search by an image, "
                     "lasso the right ones and submit; the keyword learns from that.")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such file")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    @app.get("/api/info")
    def info():
        return {
            "size": collection.size, "dim": collection.dim, "metric": collection.metric,
            "classes": store.classes, "class_counts": classes.label_counts, "groups": classes.groups,
            "examples": classes.examples(), "keywords": collection.vocabulary is not None, "map": collection.map_info(),
            "feedback": store.counts(), "max_upload_bytes": max_upload_bytes,
            "rocchio": {"alpha": alpha, "beta": beta, "gamma": gamma}, "learned_weight": learned_weight,
            "default_k": DEFAULT_K, "max_k": MAX_K, "max_event_images": MAX_EVENT_IMAGES,
            "suggestions": None if suggested is None else len(suggested),
        }

    @app.get("/api/suggestions", responses=answers(404))
    def suggestions():
        """The images the model is least sure of (`toolkit serve --suggest`), most uncertain first, to judge for query_class."""
        if suggested is None:
            raise HTTPException(404, "this server was started without --suggest MODEL or --suggest CSV, so it has no suggested images.")
        rows = [{**result, **{key: row[key] for key in ("query_class", "probability", "predicted")}}
                for row, result in zip(suggested, results([collection.ids[row["image"]] for row in suggested],
                                                          [row["score"] for row in suggested]))]
        return {"total": len(rows), "results": rows}

    ClassQuery = Query(None, alias="class", max_length=feedback.MAX_NAME_LENGTH,
                       description="Rank only the images carrying this label (one of `classes`).")

    @app.get("/api/search", responses=answers(404))
    def search(q: str = Query(..., min_length=1, max_length=200), k: int = Query(DEFAULT_K, ge=1, le=MAX_K),
               class_: str | None = ClassQuery):
        candidates, scores_, query_class, matched = keyword_scores(q, k, carrying(class_))
        ids, values = top(candidates, scores_, k)
        return {"query": {"text": q}, "query_class": query_class, "classes": matched, "results": results(ids, values)}

    @app.post("/api/search/image", responses=answers(413, 415))
    def search_image(file: UploadFile = File(...), k: int = Query(DEFAULT_K, ge=1, le=MAX_K),
                     class_: str | None = ClassQuery):
        from PIL import UnidentifiedImageError

        within = carrying(class_)
        content = file.file.read(max_upload_bytes + 1)
        if len(content) > max_upload_bytes:
            raise HTTPException(413, f"the upload is over the limit of {max_upload_bytes:,} bytes.")
        try:
            with open_image(io.BytesIO(content), what="the upload") as image:
                image.verify()
                suffix = "." + (image.format or "png").lower()
        except TooManyPixels as error:
            raise HTTPException(413, str(error)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise HTTPException(415, "the upload is not an image (JPEG, PNG, BMP or GIF).") from None
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"query{suffix}"
            path.write_bytes(content)
            try:
                if embed is None:
                    raise DataError("this server was started without an image embedder, so an uploaded image cannot be searched.")
                vector = np.asarray(embed([path]), dtype=np.float32).reshape(-1)
            except DataError as error:
                raise HTTPException(400, str(error)) from None
        if vector.shape[0] != collection.dim:
            raise HTTPException(400, f"the query has {vector.shape[0]} features but the index {collection.dim}.")
        ids, values = collection.nearest(vector, k, within=within)
        return {"query": {"image": file.filename}, "query_vector": [round(float(v), 7) for v in vector],
                "query_class": None, "results": results(ids, values)}

    @app.post("/api/search/refine", responses=answers(404, 413))
    def refine(body: Refine):
        query = body.query
        given = [name for name in ("text", "id", "vector") if getattr(query, name) is not None]
        if len(given) != 1:
            raise invalid(f"give exactly one of query.text, query.id or query.vector; received {given or 'none'}.", "body", "query")
        within = carrying(body.class_, "body")
        valid = f"the ids are 0 to {collection.size - 1}" if collection.size else "the index is empty"
        for name, ids in (("selected", body.selected), ("deselected", body.deselected)):
            bad = [i for i in ids if not 0 <= i < collection.size]
            if bad:
                raise HTTPException(404, f"{name}: image id {bad[0]} is not in the index; {valid}.")
        query_class = None
        if query.text is not None:
            candidates, scores_, query_class, _ = keyword_scores(query.text, body.k, within)
            ids, _ = top(candidates, scores_, body.k)
            vector = collection.centroid(ids)
        elif query.id is not None:
            if not 0 <= query.id < collection.size:
                raise HTTPException(404, f"query: image id {query.id} is not in the index; {valid}.")
            vector = collection.rows([query.id])[0]
        else:
            vector = np.asarray(query.vector, dtype=np.float32)
            if vector.shape[0] != collection.dim:
                raise invalid(f"query.vector has {vector.shape[0]} features but the index {collection.dim}.",
                              "body", "query", "vector")
            if not np.isfinite(vector).all():
                raise invalid("query.vector holds NaN or infinite values; send finite numbers.", "body", "query", "vector")
        # Only the judged rows are read: Rocchio's means over them, their ids renumbered into that small block.
        judged = np.unique(np.asarray(body.selected + body.deselected, dtype=np.int64))
        refined = rocchio.rocchio(vector, collection.rows(judged) if judged.size else np.zeros((0, collection.dim), np.float32),
                                  np.searchsorted(judged, body.selected), np.searchsorted(judged, body.deselected),
                                  alpha=alpha, beta=beta, gamma=gamma, metric=collection.metric)
        ids, values = collection.nearest(refined, body.k, within=within)
        return {"query": query.model_dump(exclude_none=True) if query.vector is None else {"vector": "given"},
                "query_class": query_class, "rocchio": {"alpha": alpha, "beta": beta, "gamma": gamma},
                "selected": len(body.selected), "deselected": len(body.deselected), "results": results(ids, values)}

    @app.get("/api/images")
    def browse(offset: int = Query(0, ge=0), limit: int = Query(DEFAULT_K, ge=1, le=MAX_K), class_: str | None = ClassQuery):
        """A page of the collection in index order (the start page), only the images carrying `class` when given."""
        within = carrying(class_)
        if within is None:
            total, ids = collection.size, np.arange(offset, min(offset + limit, collection.size))
        else:
            members = np.flatnonzero(within)
            total, ids = len(members), members[offset : offset + limit]
        return {"total": int(total), "offset": offset, "results": results(ids, first=offset + 1)}

    image_content = {kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_MEDIA_TYPES}
    cache_headers = {name: {"description": text, "schema": {"type": "string"}} for name, text in (
        ("ETag", "The version of this answer; send it back as If-None-Match to get a 304 while it holds."),
        ("Cache-Control", "How long a browser may keep the answer without asking again."))}
    not_modified_answer = {304: {"description": "Not modified: the If-None-Match names the current ETag."}}

    def file_tag(path: Path, name: str) -> str:
        """An image's version: its name, size and modification time (ns), hashed; a changed file gets a new one."""
        stat = path.stat()
        return hashlib.blake2b(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode(), digest_size=16).hexdigest()

    def indexed_file(image_id: int) -> Path:
        path = collection.file(image_id)
        if path is None:
            raise HTTPException(404, f"unknown image id {image_id}.")
        return path

    @app.get("/api/images/{image_id}", response_class=FileResponse, responses={
        200: {"description": "The image file as indexed.", "content": image_content, "headers": cache_headers},
        **not_modified_answer, **answers(404)})
    def image(image_id: int, request: Request):
        # A file with transparency is sent composited onto the background, as the model and the thumbnails see it.
        path = indexed_file(image_id)
        etag = '"' + file_tag(path, f"{collection.names[image_id]}\0{background}\0full") + '"'
        headers = {"ETag": etag, "Cache-Control": f"max-age={IMAGE_MAX_AGE_S}"}
        if not_modified(request, etag):
            return Response(status_code=304, headers=headers)
        what = f"image {image_id} ({collection.names[image_id]})"
        try:
            with open_image(path, what=what) as picture:
                transparent = has_alpha(picture)
        except (OSError, ValueError, DataError):  # undecodable or too large to decode: sent as it is, as before
            transparent = False
        if transparent:
            try:
                return Response(thumbnail_png(path, what, background, size=None), media_type="image/png", headers=headers)
            except DataError as error:
                raise invalid(str(error), "path", "image_id") from None
        return FileResponse(path, headers=headers)

    @app.get("/api/thumbnails/{image_id}", response_class=Response, responses={
        200: {"description": f"A PNG at most {THUMBNAIL_SIZE} px a side.", "content": {"image/png": image_content["image/png"]},
              "headers": cache_headers}, **not_modified_answer, **answers(404)})
    def thumbnail(image_id: int, request: Request):
        path = indexed_file(image_id)
        key = file_tag(path, f"{collection.names[image_id]}\0{background}")  # a thumbnail per background
        headers = {"ETag": f'"{key}"', "Cache-Control": f"max-age={THUMBNAIL_MAX_AGE_S}"}
        if not_modified(request, headers["ETag"]):
            return Response(status_code=304, headers=headers)
        with thumbnail_lock:
            cached = thumbnails.get(key)
        if cached is None:
            cached = disk.read(key) if disk else None
            if cached is None:
                try:
                    cached = thumbnail_png(path, f"image {image_id} ({collection.names[image_id]})", background)
                except DataError as error:
                    raise invalid(str(error), "path", "image_id") from None
                if disk:
                    disk.write(key, cached)
            with thumbnail_lock:
                thumbnails[key] = cached
                while len(thumbnails) > THUMBNAIL_CACHE:
                    thumbnails.popitem(last=False)
        return Response(cached, media_type="image/png", headers=headers)

    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    map_layout = ("Little-endian float32 x[N], then float32 y[N], then uint16 group[N] (the position in info.groups; "
                  f"{NO_GROUP} for an image the feedback store does not know); NaN x and y: no point. N = the index size.")
    map_headers = {**cache_headers, **{name: {"description": text, "schema": {"type": "string"}} for name, text in (
        ("X-Map-Source", "Where the coordinates come from: the --map CSV's file name, or pca."),
        ("X-Map-Points", "How many images have a point."))}}
    map_lock, map_payload = threading.Lock(), {}

    def map_answer() -> tuple[bytes, dict]:
        """The map's bytes and headers, made once (a PCA map is computed on the first call) and kept."""
        with map_lock:
            if not map_payload:
                coords, source = the_map()
                body = b"".join((np.ascontiguousarray(coords[:, 0], dtype="<f4").tobytes(),
                                 np.ascontiguousarray(coords[:, 1], dtype="<f4").tobytes(), classes.group_codes.tobytes()))
                map_payload.update(body=body, headers={
                    "ETag": f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"', "Cache-Control": "no-cache",
                    "X-Map-Source": source, "X-Map-Points": str(int((~np.isnan(coords[:, 0])).sum()))})
            return map_payload["body"], map_payload["headers"]

    @app.get("/api/map", response_class=Response, responses={
        200: {"description": map_layout, "content": binary, "headers": map_headers}, **not_modified_answer, **answers(409)})
    def map_points(request: Request):
        body, headers = map_answer()
        if not_modified(request, headers["ETag"]):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/octet-stream", headers=headers)

    def judged(query_class: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, net votes) of the indexed images the sessions judged for a class."""
        votes = store.votes(query_class)
        pairs = [(collection.ids[image], net) for image, net in votes.items() if image in collection.ids and net]
        ids, nets = zip(*pairs) if pairs else ((), ())
        return np.array(ids, dtype=np.int64), np.array(nets, dtype=np.int64)

    def store_class(query_class: str) -> str:
        """A query class of the store; else a 422 naming the classes."""
        problem = classes.unknown(query_class)
        if problem:
            raise invalid(problem, "query", "query_class")
        return query_class

    @app.get("/api/map/states", response_class=Response, responses={
        200: {"description": "uint8[N]: 0 not judged for query_class, 1 confirmed (net session votes > 0), 2 rejected (< 0).",
              "content": binary}})
    def map_states(query_class: str = Query(..., max_length=feedback.MAX_NAME_LENGTH)):
        ids, nets = judged(store_class(query_class))
        states = np.zeros(collection.size, dtype=np.uint8)
        states[ids] = np.where(nets > 0, 1, 2)
        return Response(states.tobytes(), media_type="application/octet-stream", headers={"Cache-Control": "no-store"})

    @app.post("/api/map/select", responses=answers(409))
    def select(body: Lasso):
        """The images whose map points lie inside the lasso (in the map's coordinates), ascending by id."""
        from matplotlib.path import Path as Polygon

        if len(body.polygon) < 3:
            raise invalid(f"a lasso needs at least 3 points; received {len(body.polygon)}.", "body", "polygon")
        within = carrying(body.class_, "body")
        coords, _ = the_map()
        polygon = np.asarray(body.polygon, dtype=np.float64)
        # Only the points in the lasso's bounding box are tested (NaN compares False: no point, never inside).
        boxed = np.flatnonzero(((coords >= polygon.min(axis=0)) & (coords <= polygon.max(axis=0))).all(axis=1))
        inside = np.zeros(collection.size, dtype=bool)
        inside[boxed] = Polygon(polygon).contains_points(coords[boxed])
        if within is not None:
            inside &= within
        ids = np.flatnonzero(inside)[:MAX_EVENT_IMAGES].tolist()
        return {"count": int(inside.sum()), "ids": ids, "images": [collection.names[i] for i in ids],
                "truncated": bool(inside.sum() > MAX_EVENT_IMAGES)}

    @app.get("/api/feedback/counts")
    def feedback_counts(query_class: str | None = Query(None, max_length=feedback.MAX_NAME_LENGTH)):
        """Events and images in the store; with query_class, the images confirmed and rejected for it."""
        nets = judged(store_class(query_class))[1] if query_class else np.zeros(0)
        return {**store.counts(), "confirmed": int((nets > 0).sum()), "rejected": int((nets < 0).sum())}

    @app.post("/api/feedback", responses=answers(409, 413, 503, 507))
    def add_feedback(event: Event = Body(...)):
        try:
            stored, added = store.add(event.model_dump(exclude_none=True))
        except feedback.EventConflict as conflict:
            raise HTTPException(409, f"{conflict}.") from None
        except ValueError as error:
            raise invalid(str(error), "body") from None
        except sqlite3.OperationalError as error:
            if feedback.is_locked(error):  # Only a lock passes: a retry of anything else would fail again.
                raise busy(f"the feedback store is busy ({error}); send the event again.") from None
            problem = feedback.database_error(store.db, error, store.wait)
            if problem is None:
                raise
            raise HTTPException(507, str(problem)) from None
        except DataError as error:  # The store's file went away or became unreadable since start-up.
            raise HTTPException(507, str(error)) from None
        return {"id": stored["id"], "added": added}

    @app.get("/api/feedback/export", response_class=Response, responses={
        200: {"description": "One row per judged image (toolkit feedback export).",
              "content": {"text/csv": {"schema": {"type": "string"}}}}, **answers(503)})
    def export():
        try:
            frame = feedback.image_feedback(store.db, wait=store.wait)
        except (sqlite3.OperationalError, DataError) as error:
            raise busy(f"the feedback store cannot be read now ({error}); try again.") from None
        return Response(frame.to_csv(index=False), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="image_feedback.csv"'})

    app.add_exception_handler(RequestValidationError, validation_error)
    app.state.collection, app.state.store = collection, store
    return app


class BodyTooLarge(Exception):
    """Raised into the app when a request body passes its limit, so nothing more of it is read."""


async def refuse(scope: dict, receive: Callable, send: Callable, status: int, detail: str, headers: dict | None = None) -> None:
    """Answer a request from a middleware with the app's `{"detail": ...}` body."""
    from fastapi.responses import JSONResponse

    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


class BodyLimit:
    """ASGI middleware: count each request's body as it arrives and stop at the limit with a 413.

    A Content-Length over the limit is refused unread; a body without one
    (chunked) is cut off at the first chunk past the limit, so no more than
    the limit ever reaches Starlette's multipart parser, which spools an
    upload to a temporary file. Uploads to `upload_path` may carry
    `max_upload_bytes` (plus the multipart headers); other bodies `MAX_BODY_BYTES`.
    """

    def __init__(self, app: Callable, *, upload_path: str, max_upload_bytes: int):
        self.app, self.upload_path, self.max_upload_bytes = app, upload_path, max_upload_bytes

    def limit(self, path: str) -> tuple[int, str]:
        """(bytes a request to `path` may send, the limit's wording for the answer)."""
        if path == self.upload_path:
            return self.max_upload_bytes + MULTIPART_OVERHEAD, f"upload limit of {self.max_upload_bytes:,} bytes"
        return MAX_BODY_BYTES, f"request body limit of {MAX_BODY_BYTES:,} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, wording = self.limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await refuse(scope, receive, send, 413, f"the request ({int(length):,} bytes) is over the {wording}.")
            return
        counted, over = 0, False

        async def counting_receive():
            nonlocal counted, over
            message = await receive()
            if message["type"] == "http.request":
                counted += len(message.get("body", b""))
                if counted > limit:
                    over = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message):
            if not over:  # FastAPI answers a body it could not read (400); the 413 below replaces that.
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over:
            await refuse(scope, receive, send, 413, f"the request (over {limit:,} bytes so far) is over the {wording}.")


class TokenGate:
    """ASGI middleware: every /api request must carry the token, as a Bearer header or as the page's cookie.

    Opening `/?token=TOKEN` sets the cookie (HttpOnly, SameSite=Strict) and
    redirects to `/`, so the page, its fetches and its <img> thumbnails carry
    the token without a script seeing it, and the URL bar no longer shows it.
    """

    def __init__(self, app: Callable, *, token: str):
        self.app, self.token = app, token.encode("utf-8")

    def matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode("utf-8"), self.token)

    async def __call__(self, scope, receive, send):
        from starlette.requests import Request
        from starlette.responses import RedirectResponse

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if scope["path"] == "/" and "token" in request.query_params and self.matches(request.query_params["token"]):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token.decode("utf-8"), httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        if scope["path"].startswith("/api/") and not self.carried(request):
            await refuse(scope, receive, send, 401, "this server needs its token: open /?token=TOKEN once in the browser, "
                         "or send the header 'Authorization: Bearer TOKEN'.", headers={"WWW-Authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)

    def carried(self, request: "Request") -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        return (scheme.lower() == "bearer" and self.matches(credentials.strip())) or self.matches(request.cookies.get(TOKEN_COOKIE))
