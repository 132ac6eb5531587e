"""The OpenAPI schema of `toolkit serve` describes what the app answers: schemathesis in process, and the documented shapes.

Schemathesis generates requests from /openapi.json and sends them to the
ASGI app directly (no network, no server), checking that no answer is a
server error and that every status code, content type, header and body is
the one the schema declares. The data set is 12 digits at 32 px.
"""

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")
schemathesis = pytest.importorskip("schemathesis", reason="the test extra's schemathesis is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from image_toolkit.data_tools.formats.features import FeatureSet, write_features  # noqa: E402
from image_toolkit.data_tools.make_demo_data import write_digits_dataset  # noqa: E402
from image_toolkit.data_tools.search.index import ImageIndex  # noqa: E402
from image_toolkit.data_tools.web.app import create_app  # noqa: E402

CLASSES = ["even", "prime", "five_or_more", "closed_loop"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
# Examples per operation: 13 operations, about 30 s in all on two cores (CI).
EXAMPLES = 25


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app over 12 digits: pixel features, class scores for keywords, the labels as the store's data set."""
    from PIL import Image

    root = tmp_path_factory.mktemp("schema")
    table = write_digits_dataset(root, n_images=12, image_size=32, blank_fraction=0.0, seed=4)
    names = table["image"].tolist()

    def pixels(paths):
        return np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32).ravel() / 255 for p in paths])

    ImageIndex(kind="flat").fit(FeatureSet(names, pixels([root / "images" / n for n in names]), {"model": "pixels"})).save(root / "index")
    scores = table[CLASSES].to_numpy(np.float32)
    write_features(root / "scores.npz", FeatureSet(names, scores, {"model": "labels", "output": "scores", "class_names": CLASSES}))
    return create_app(root / "index", root / "images", root / "feedback.sqlite", labels=root / "label.txt",
                      scores=root / "scores.npz", embed=pixels, max_upload_bytes=20_000, allowed_hosts=["testserver"])


def test_every_answer_is_the_one_the_schema_declares(app):
    """Each operation of the schema, EXAMPLES generated requests each (derandomized: the same ones every run).

    Hypothesis drives schemathesis's strategies directly: its pytest
    loader (`schemathesis.pytest.from_fixture`) does not run under pytest 9.
    """
    from hypothesis import given

    api_schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 14  # with GET /api/suggestions (serve --suggest; 404 without it)

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=CHECKS)

        check()


def test_the_schema_documents_content_types_codes_and_the_validation_shape(app):
    client = TestClient(app)
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/api/feedback/export"]["get"]["responses"]["200"]["content"]) == {"text/csv"}
    assert {"image/png", "image/jpeg"} <= set(paths["/api/images/{image_id}"]["get"]["responses"]["200"]["content"])
    assert set(paths["/api/thumbnails/{image_id}"]["get"]["responses"]["200"]["content"]) == {"image/png"}
    for binary in ("/api/map", "/api/map/states"):
        assert set(paths[binary]["get"]["responses"]["200"]["content"]) == {"application/octet-stream"}
    assert {"ETag", "X-Map-Source", "X-Map-Points"} <= set(paths["/api/map"]["get"]["responses"]["200"]["headers"])
    assert {"400", "413", "415", "422"} <= set(paths["/api/search/image"]["post"]["responses"])
    assert {"404", "413", "422"} <= set(paths["/api/search/refine"]["post"]["responses"])
    feedback = paths["/api/feedback"]["post"]["responses"]
    assert {"409", "413", "422", "503"} <= set(feedback) and "Retry-After" in feedback["503"]["headers"]
    # The app's own 422 has FastAPI's validation shape, as the schema says for every 422.
    answer = client.post("/api/search/refine", json={"query": {}})
    assert answer.status_code == 422 and {"loc", "msg", "type"} <= set(answer.json()["detail"][0])
    assert feedback["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/HTTPValidationError")
