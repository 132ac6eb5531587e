import numpy as np
import pytest

from image_toolkit.data_tools.errors import OptionError
from image_toolkit.data_tools.formats.missing_labels import fill_missing


def labels_with_holes(seed=0, n=400, hole_rate=0.2):
    """Three labels where the third is the AND of the first two: an MF can recover it."""
    rng = np.random.default_rng(seed)
    a, b = rng.random(n) < 0.5, rng.random(n) < 0.5
    full = np.stack([a, b, a & b], axis=1).astype(np.float32)
    holes = rng.random(full.shape) < hole_rate
    return full, np.where(holes, np.nan, full), holes


def test_mask_keeps_unknown_cells():
    _, observed, holes = labels_with_holes()
    np.testing.assert_array_equal(np.isnan(fill_missing(observed, "mask")), holes)


def test_mean_fills_with_column_mean_of_known_cells():
    _, observed, holes = labels_with_holes()
    filled = fill_missing(observed, "mean")
    for j in range(3):
        np.testing.assert_allclose(filled[holes[:, j], j], np.nanmean(observed[:, j]), rtol=1e-5)
    np.testing.assert_array_equal(filled[~holes], observed[~holes])


def test_mf_recovers_correlated_labels_better_than_the_mean():
    full, observed, holes = labels_with_holes()
    mf = fill_missing(observed, "mf", seed=0)
    mean = fill_missing(observed, "mean")
    mf_error = np.abs(mf[holes] - full[holes]).mean()
    mean_error = np.abs(mean[holes] - full[holes]).mean()
    assert mf_error < 0.8 * mean_error
    assert ((mf[holes] >= 0.5) == (full[holes] == 1)).mean() >= 0.75
    assert not np.isnan(mf).any() and mf.min() >= 0 and mf.max() <= 1


def test_unknown_strategy_is_refused():
    with pytest.raises(OptionError, match="--missing-labels"):
        fill_missing(np.zeros((2, 2)), "median")
