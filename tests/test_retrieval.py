import numpy as np
import pytest

from image_toolkit.data_tools.errors import DataError
from image_toolkit.data_tools.search.retrieval import retrieval_scores


def test_perfectly_separated_classes_score_one():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8) * 10
    classes = np.repeat(np.arange(4), 6)
    embeddings = centres[classes] + rng.normal(0, 0.1, (24, 8))
    scores = retrieval_scores(embeddings, classes, metric="euclidean")
    assert scores == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "map@r": 1.0, "knn_accuracy": 1.0}


def test_map_at_r_on_a_hand_computed_case():
    # Points on a line; classes a a b a b. Query 0 (a): others by distance 1(a) 2(b) 3(a) 4(b); R = 2,
    # hits within R: rank 1 only -> AP = (1/1) / 2 = 0.5.
    embeddings = np.array([[0.0], [1.0], [2.1], [3.3], [4.6]], dtype=np.float32)
    classes = np.array(["a", "a", "b", "a", "b"])
    scores = retrieval_scores(embeddings, classes, metric="euclidean", knn=1)
    # query 1 (a): 0 (a, d=1) then 2 (b, d=1.1): AP = 1/2. query 2 (b): 1 (a) 3 (a): R=1, AP=0.
    # query 3 (a): 2 (b, 1.2) then 4 (b, 1.3): AP = 0. query 4 (b): 3 (a): R=1, AP = 0.
    assert scores["map@r"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0) / 5)
    assert scores["recall@1"] == pytest.approx(2 / 5)


def test_an_image_alone_in_its_class_is_a_distractor_not_a_query():
    # c sits between a's two images: a's queries miss at rank 1; c itself is not scored.
    embeddings = np.array([[0.0], [2.0], [1.0]], dtype=np.float32)
    scores = retrieval_scores(embeddings, np.array(["a", "a", "c"]), metric="euclidean", knn=1)
    assert scores["recall@1"] == 0.0 and scores["map@r"] == 0.0


def test_a_gallery_of_single_images_is_refused():
    with pytest.raises(DataError, match="every class has a single image"):
        retrieval_scores(np.zeros((3, 2)), np.array(["a", "b", "c"]))


def test_knn_below_one_is_a_usage_error():
    from image_toolkit.data_tools.errors import OptionError

    with pytest.raises(OptionError, match=r"^knn must be at least 1. Received: knn=0$"):
        retrieval_scores(np.zeros((4, 2)), np.array(["a", "a", "b", "b"]), knn=0)
