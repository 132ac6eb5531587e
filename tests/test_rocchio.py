"""Rocchio relevance feedback and residual precision, on vectors where the right answer is known."""

import numpy as np
import pytest

from image_toolkit.data_tools.errors import OptionError
from image_toolkit.data_tools.search import rocchio


def unit(degrees):
    radians = np.radians(degrees)
    return np.array([np.cos(radians), np.sin(radians)], dtype=np.float32)


# Six unit vectors at known angles; the query points at 0 degrees.
ANGLES = [0, 30, 60, 90, -30, -60]
FEATURES = np.stack([unit(a) for a in ANGLES])


def test_rocchio_formula_with_the_documented_defaults():
    refined = rocchio.rocchio(unit(0) * 5, FEATURES * 3, selected=[2], deselected=[5])
    expected = 1.0 * unit(0) + 0.75 * unit(60) - 0.15 * unit(-60)  # lengths are normalised away (cosine)
    np.testing.assert_allclose(refined, expected, rtol=1e-6)
    assert (rocchio.ALPHA, rocchio.BETA, rocchio.GAMMA) == (1.0, 0.75, 0.15)


def test_refinement_moves_the_ranking_towards_the_selected():
    before, _ = rocchio.rank(unit(0), FEATURES)
    assert before.tolist() == [0, 1, 4, 2, 5, 3]  # ties (30 and -30 degrees) by id
    # q' points at 30.9 degrees: 30 first, then 60 (29.1 away) before 0 (30.9), then 90, -30, -60.
    after, scores = rocchio.rank(rocchio.rocchio(unit(0), FEATURES, [2], [5]), FEATURES)
    assert after.tolist() == [1, 2, 0, 3, 4, 5]
    assert np.all(np.diff(scores) <= 0)


def test_euclidean_uses_rows_as_they_are():
    rows = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
    refined = rocchio.rocchio(rows[0], rows, selected=[1], deselected=[2], alpha=1, beta=1, gamma=0.5, metric="euclidean")
    np.testing.assert_allclose(refined, [10, -5])
    assert rocchio.rank(refined, rows, metric="euclidean")[0].tolist() == [1, 0, 2]


def test_residual_precision_leaves_the_judged_out():
    ranking = [0, 1, 2, 3, 4, 5]
    assert rocchio.residual_precision_at_k(ranking, relevant={0, 1, 3}, judged={0, 1}, k=2) == 0.5  # residual: 2, 3
    assert rocchio.residual_precision_at_k(ranking, relevant={5}, judged=set(range(5)), k=2) == 0.5  # one left


def test_a_round_of_feedback_must_help_where_the_query_leans_to_the_wrong_class():
    """Unit vectors at known angles; the query (0 degrees, class 0) lies nearer class 1's residual images.

    Judged: the top 4 (+10 and +15 of class 0, selected; -5 and -10 of
    class 1, deselected). Left: class 1 at -29, -31, -33 degrees, class 0
    at +35, +38, +40. Before: the three nearest residual images are class
    1's (29-33 degrees away, class 0's are 35-40). q' points at +6.5
    degrees: class 0's are then 28.5-33.5 degrees away, class 1's 35.5-39.5.
    """
    angles = [0, -5, 10, -10, 15, -29, -31, -33, 35, 38, 40]
    labels = np.array([0, 1, 0, 1, 0, 1, 1, 1, 0, 0, 0])
    features = np.stack([unit(a) for a in angles])
    refined = rocchio.rocchio(features[0], features, selected=[2, 4], deselected=[1, 3])
    assert np.degrees(np.arctan2(refined[1], refined[0])) == pytest.approx(6.5, abs=0.1)
    before, after = rocchio.feedback_round(features, labels, 0, judge=4, k=3)
    assert (before, after) == (0.0, 1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"selected": [6]}, "image id 6 is not in the index"),
    ({"deselected": [-1]}, "image id -1"),
    ({"metric": "manhattan"}, "Expected one of cosine, euclidean"),
    ({"beta": -1}, "beta must be at least 0"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    with pytest.raises(OptionError, match=message):
        rocchio.rocchio(unit(0), FEATURES, **kwargs)


@pytest.mark.parametrize("n, k", [(1, 1), (7, 3), (200, 1), (200, 5), (200, 49), (200, 50), (200, 150), (200, 200), (200, 500)])
def test_top_k_is_a_full_sort_by_score_then_index(n, k):
    """Against a plain sort, on scores with many ties: the partition path (k << n) and the full sort agree."""
    from image_toolkit.data_tools.search.ranking import top_k

    scores = np.random.default_rng(n + k).integers(0, 6, n).astype(np.float32)  # about n / 6 ties per value
    expected = sorted(range(n), key=lambda i: (-scores[i], i))[:k]
    assert top_k(scores, k).tolist() == expected
    assert top_k(scores).tolist() == sorted(range(n), key=lambda i: (-scores[i], i))


def test_top_k_puts_nan_last_and_takes_no_rows_for_k_0():
    from image_toolkit.data_tools.search.ranking import top_k

    assert top_k(np.array([np.nan, 1.0, 3.0, 1.0]), 4).tolist() == [2, 1, 3, 0]
    assert top_k(np.arange(5.0), 0).tolist() == []
