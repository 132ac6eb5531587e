"""Progress bars on stderr: drawn on a terminal or when asked, never with quiet, never on stdout."""

import io

import numpy as np
import pytest

from image_toolkit.data_tools.formats.features import FeatureSet
from image_toolkit.data_tools.maps.embedding import default_n_jobs, embed_2d
from image_toolkit.data_tools.progress import progress_bar, should_show, track
from image_toolkit.data_tools.search.index import ImageIndex


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def points(n=120, dim=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_the_default_shows_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not should_show()
    assert list(track(range(3), "Steps")) == [0, 1, 2]
    import sys

    assert sys.stderr.getvalue() == ""
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert should_show() and not should_show(False)
    with progress_bar(4, "Steps") as advance:
        advance(4)
    assert "Steps" in terminal.getvalue() and "4/4" in terminal.getvalue()


def test_quiet_on_a_terminal_writes_nothing(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert list(track([1, 2], "Steps", show=False)) == [1, 2]
    embed_2d(points(), seed=0, show=False)
    assert terminal.getvalue() == ""


@pytest.mark.parametrize("show", [True, False])
def test_tsne_bar_follows_the_iterations(capsys, show):
    coords = embed_2d(points(), seed=0, n_jobs=1, show=show)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert ("t-SNE" in captured.err and "750/750" in captured.err) is show
    assert captured.err == "" or show
    np.testing.assert_array_equal(coords, embed_2d(points(), seed=0, n_jobs=1, show=False))


def test_index_build_and_add_bars(capsys):
    rows = points(600, 16)
    paths = [f"{i}.png" for i in range(600)]
    index = ImageIndex(kind="hnsw", n_threads=1).fit(FeatureSet(paths[:400], rows[:400], {}), show=True)
    err = capsys.readouterr().err
    assert "Indexing" in err and "Tuning efSearch" in err
    index.add(FeatureSet(paths[400:], rows[400:], {}), show=True)
    assert "Indexing" in capsys.readouterr().err
    ImageIndex(kind="hnsw", n_threads=1).fit(FeatureSet(paths, rows, {}), show=False)
    assert capsys.readouterr().err == ""


def test_thread_default_by_size():
    assert default_n_jobs(300) == 1 and default_n_jobs(2_000) == 1 and default_n_jobs(20_000) == -1
