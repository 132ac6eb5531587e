"""Balanced batches and positive / negative pairs: the right classes, the right mix, no image with itself."""

import numpy as np
import pytest

from image_toolkit.data_tools.errors import OptionError
from image_toolkit.models.pairs import balanced_batches, sample_pairs

CLASSES = np.repeat(np.array(["cat", "dog", "owl", "fox"]), [50, 30, 15, 5])


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_pairs_have_the_asked_share_of_positives_and_true_labels(ratio):
    first, second, same = sample_pairs(CLASSES, n_pairs=len(CLASSES), positive_ratio=ratio, rng=np.random.default_rng(0))
    assert sorted(first) == list(range(len(CLASSES)))  # Every image once as the first of a pair.
    assert not (first == second).any()
    np.testing.assert_array_equal(same, (CLASSES[first] == CLASSES[second]).astype(np.float32))
    many = np.concatenate(
        [sample_pairs(CLASSES, n_pairs=100, positive_ratio=ratio, rng=np.random.default_rng(seed))[2] for seed in range(40)]
    )
    assert many.mean() == pytest.approx(ratio, abs=0.03)


def test_partners_are_drawn_evenly():
    # 200 pairs of the four-image class "fox" against the rest: each other fox, and each non-fox, comes up.
    partners = {}
    for seed in range(200):
        first, second, same = sample_pairs(CLASSES, n_pairs=len(CLASSES), positive_ratio=0.5, rng=np.random.default_rng(seed))
        for a, b, s in zip(first, second, same):
            if a == 95:
                partners.setdefault(bool(s), []).append(b)
    assert set(partners[True]) == {96, 97, 98, 99}
    assert len(set(partners[False])) > 50 and all(CLASSES[b] != "fox" for b in partners[False])


def test_a_group_of_one_class_pairs_positives_and_a_lonely_image_pairs_negatives():
    classes = np.array(["a", "a", "a", "b"])
    first, second, same = sample_pairs(classes, n_pairs=4, positive_ratio=0.5, rng=np.random.default_rng(1),
                                       batches=[np.array([0, 1, 2]), np.array([0, 3])])
    np.testing.assert_array_equal(same, [1, 1, 1, 0, 0])
    assert set(second[:3]) <= {0, 1, 2} and list(second[3:]) == [3, 0]


def test_pairs_inside_balanced_batches_stay_inside_them():
    rng = np.random.default_rng(2)
    batches = balanced_batches(CLASSES, classes_per_batch=3, examples_per_class=4, rng=rng)
    assert len(batches) == len(CLASSES) // 12
    for batch in batches:
        assert len(batch) == 12 and len(set(CLASSES[batch])) == 3
        assert all(np.unique(CLASSES[batch], return_counts=True)[1] == 4)
    first, second, _ = sample_pairs(CLASSES, n_pairs=0, positive_ratio=0.5, rng=rng, batches=batches)
    start = 0
    for batch in batches:
        assert set(second[start : start + len(batch)]) <= set(batch)
        start += len(batch)


def test_pairs_are_deterministic_with_the_seed():
    one = sample_pairs(CLASSES, n_pairs=60, positive_ratio=0.5, rng=np.random.default_rng(7))
    two = sample_pairs(CLASSES, n_pairs=60, positive_ratio=0.5, rng=np.random.default_rng(7))
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_impossible_settings_are_refused():
    with pytest.raises(OptionError, match="--positive-ratio"):
        sample_pairs(CLASSES, n_pairs=10, positive_ratio=1.0, rng=np.random.default_rng(0))
    with pytest.raises(OptionError, match="more than the 4 classes"):
        balanced_batches(CLASSES, classes_per_batch=5, examples_per_class=2, rng=np.random.default_rng(0))
    with pytest.raises(OptionError, match="A batch of one image"):
        sample_pairs(CLASSES, n_pairs=1, positive_ratio=0.5, rng=np.random.default_rng(0))
