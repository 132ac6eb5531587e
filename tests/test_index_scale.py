"""`ImageIndex` at scale: building and adding stream the features in blocks, and a large index loads memory-mapped."""

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from image_toolkit.cli.index import index
from image_toolkit.cli.search import search
from image_toolkit.data_tools.errors import OptionError
from image_toolkit.data_tools.formats.features import FeatureSet, write_features
from image_toolkit.data_tools.search import approximate_neighbors
from image_toolkit.data_tools.search import index as index_module
from image_toolkit.data_tools.search.approximate_neighbors import find_neighbors
from image_toolkit.data_tools.search.index import ImageIndex
from tests.test_index import clustered, feature_set

BLOCK = 500  # ADD_BLOCK for these tests: several blocks in a few thousand rows.


class BlockOnly:
    """An on-disk array stand-in that gives out row slices of at most one block, and refuses to be read whole."""

    def __init__(self, rows: np.ndarray):
        self.rows, self.shape, self.dtype, self.reads = rows, rows.shape, rows.dtype, 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item):
        if not isinstance(item, slice) or len(range(*item.indices(len(self.rows)))) > BLOCK:
            raise AssertionError(f"read more than a block at once: {item!r}")
        self.reads += 1
        return self.rows[item]

    def __array__(self, *args, **kwargs):
        raise AssertionError("read whole")


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(index_module, "ADD_BLOCK", BLOCK)


@pytest.fixture(scope="module")
def rows():
    return clustered(3000, 32)


def results(image_index: ImageIndex, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return image_index.search(queries, k=10)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_fit_and_add_read_the_features_a_block_at_a_time_and_build_the_same_index(rows, kind, metric):
    options = {"kind": kind, "metric": metric, "n_threads": 1}
    whole = ImageIndex(**options).fit(feature_set(rows[:2000])).add(feature_set(rows[1500:], start=1500))
    old, new = BlockOnly(rows[:2000]), BlockOnly(rows[1500:])
    streamed = ImageIndex(**options).fit(FeatureSet(feature_set(rows[:2000]).paths, old, {}))
    streamed.add(FeatureSet(feature_set(rows[1500:], start=1500).paths, new, {}))
    assert old.reads and new.reads
    assert streamed.paths_ == whole.paths_ and streamed.size == 3000
    assert streamed.tuning_ == whole.tuning_ and streamed.params_ == whole.params_
    for got, expected in zip(results(streamed, rows[:50]), results(whole, rows[:50])):
        np.testing.assert_array_equal(got, expected)
    order = [int(path[7:12]) for path in streamed.paths_]
    np.testing.assert_allclose(streamed.vectors(), rows[order], rtol=1e-5, atol=1e-5)


def test_fit_from_a_memmap_holds_no_copy_of_the_features(tmp_path):
    """numpy's peak allocation (tracemalloc sees it) does not grow with the rows: blocks, sample and tuning stay the same size.

    Twice the rows would add at least twice their bytes to the peak if they
    were copied (before streaming: three copies); here a few bytes a row (masks, row numbers, lengths).
    """
    np.save(tmp_path / "features.npy", clustered(20_000, 64))
    features = np.load(tmp_path / "features.npy", mmap_mode="r")
    paths = [f"images/{i:05d}.jpg" for i in range(len(features))]
    peaks = []
    for n in (10_000, 20_000):
        tracemalloc.start()
        try:
            ImageIndex(kind="ivf", nlist=8, n_threads=1).fit(FeatureSet(paths[:n], features[:n], {}))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    more_rows = features[10_000:].nbytes
    assert peaks[1] - peaks[0] < more_rows / 4, f"{(peaks[1] - peaks[0]) / 2**20:.2f} MB more for {more_rows / 2**20:.2f} MB more rows"


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_neighbors_read_the_features_a_block_at_a_time(rows, monkeypatch, method):
    """The index, the sample, its exact neighbours (the truth of the recall) and the search all read by blocks:
    no second N x D copy of an h5 dataset beside the index (the sample's exact search used to read it whole)."""
    monkeypatch.setattr(approximate_neighbors, "BLOCK_ROWS", BLOCK)
    streamed = BlockOnly(rows)
    found = find_neighbors(streamed, k=5, method=method, n_threads=1)
    expected = find_neighbors(rows, k=5, method=method, n_threads=1)
    assert streamed.reads
    assert found.recall == expected.recall and found.params == expected.params
    np.testing.assert_array_equal(found.indices, expected.indices)
    np.testing.assert_array_equal(found.distances, expected.distances)


def test_a_damaged_row_in_a_later_block_leaves_the_index_unchanged(rows):
    image_index = ImageIndex(kind="flat").fit(feature_set(rows[:1000]))
    bad = rows[1000:].copy()
    bad[1700] = np.nan  # In the fourth block of the new rows.
    with pytest.raises(Exception, match="NaN or infinity"):
        image_index.add(FeatureSet(feature_set(bad, start=1000).paths, BlockOnly(bad), {}))
    assert image_index.size == len(image_index.paths_) == len(image_index.norms_) == 1000


def test_training_uses_a_sample_of_rows_per_list(monkeypatch, rows):
    trained = []
    monkeypatch.setattr(ImageIndex, "_train", lambda self, sample: (trained.append(len(sample)), self.index_.train(sample)))
    ImageIndex(kind="ivf", nlist=10, n_threads=1).fit(feature_set(rows))
    assert trained == [index_module.TRAIN_ROWS_PER_LIST * 10]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_a_memory_mapped_index_searches_the_same_and_refuses_to_grow(tmp_path, rows, kind):
    ImageIndex(kind=kind, n_threads=1).fit(feature_set(rows[:2000])).save(tmp_path / "index")
    read = ImageIndex.load(tmp_path / "index", mmap=False)
    mapped = ImageIndex.load(tmp_path / "index", mmap=True)
    assert mapped.mapped_ and not read.mapped_
    assert mapped.params_ == read.params_
    for got, expected in zip(results(mapped, rows[2000:2100]), results(read, rows[2000:2100])):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(OptionError, match="mmap=False"):
        mapped.add(feature_set(rows[2000:], start=2000))


def test_load_maps_only_files_above_the_threshold(tmp_path, monkeypatch, rows):
    ImageIndex(kind="flat").fit(feature_set(rows[:100])).save(tmp_path / "index")
    assert not ImageIndex.load(tmp_path / "index").mapped_
    monkeypatch.setattr(index_module, "MMAP_BYTES", 0)
    assert ImageIndex.load(tmp_path / "index").mapped_


def test_commands_work_on_an_index_large_enough_to_map(runner, tmp_path, monkeypatch, rows):
    """`search` and `info` map it; `index add` must not (a mapped faiss index would abort the process on add)."""
    monkeypatch.setattr(index_module, "MMAP_BYTES", 0)
    monkeypatch.chdir(tmp_path)
    write_features(tmp_path / "old.npz", feature_set(rows[:2000]))
    write_features(tmp_path / "new.npz", feature_set(rows[2000:], start=2000))
    for command, args in ((index, ["build", "old.npz", "index"]), (index, ["add", "index", "new.npz"]),
                          (index, ["info", "index"]), (search, ["index", "--features", "new.npz", "-k", "1", "--json"])):
        result = runner.invoke(command, [*args, "--quiet"] if command is index and args[0] != "info" else args)
        assert result.exit_code == 0, result.output
    assert '"path": "images/02000.jpg", "distance": 0.0' in result.output
    assert ImageIndex.load(tmp_path / "index").size == 3000


MEASURE_LOADS = """
import sys
from image_toolkit.data_tools.search.index import ImageIndex

def private_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon")) / 1024

for mmap in (True, False):  # Mapped first: the other load's memory, once freed, would be reused.
    before = private_mb()
    loaded = ImageIndex.load(sys.argv[1], mmap=mmap)
    print(private_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_mapped_load_reads_almost_nothing_into_private_memory(tmp_path):
    """A 20 MB flat index, loaded in a fresh process: whole it takes 20 MB of private memory, mapped under 2 MB."""
    rows = np.random.default_rng(0).standard_normal((20_000, 256)).astype(np.float32)
    ImageIndex(kind="flat", metric="euclidean").fit(FeatureSet([str(i) for i in range(len(rows))], rows, {})).save(tmp_path / "index")
    measured = subprocess.run([sys.executable, "-c", MEASURE_LOADS, str(tmp_path / "index")],
                              capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    mapped, read = map(float, measured.stdout.split())
    assert mapped < 2 and read > 15, (mapped, read)
