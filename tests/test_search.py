"""`toolkit search`: by image, by feature rows, by keyword; and bad input, one test each."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from image_toolkit.cli.extract import get_inception_output, get_transfer_layer
from image_toolkit.cli.index import index
from image_toolkit.cli.search import search
from image_toolkit.cli.train import train
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import FeatureSet, read_features, write_features
from image_toolkit.data_tools.search.index import ImageIndex
from image_toolkit.data_tools.search.keywords import imagenet_class_names, match_classes, rank_by_classes, read_word_vectors
from tests.conftest import one_line_error

ROOT = Path(__file__).resolve().parent.parent
POOLED = {"model": "resnet50", "output": "pooled", "layer": "avg_pool", "image_size": 224, "weights": "imagenet"}
IMAGENET_SCORES = {"model": "inceptionv3", "output": "scores", "layer": "predictions", "image_size": 299, "weights": "imagenet"}
VOCABULARY = ["sofa", "dining table", "tiger shark", "tabby cat"]
# A hand-made word2vec text file: a header (words, dimension), then one word and its vector per line.
WORD_VECTORS = """6 3
couch 0.9 0.1 0.0
sofa 1.0 0.0 0.0
table 0.0 1.0 0.0
shark 0.0 0.0 1.0
fish 0.1 0.0 0.9
kitten 0.0 0.7 0.7
"""


def run(runner, *args):
    return runner.invoke(search, [*map(str, args), "--quiet"])


def paths(n: int, start: int = 0) -> list[str]:
    return [f"images/{start + i:04d}.jpg" for i in range(n)]


@pytest.fixture(scope="module")
def pooled_index(tmp_path_factory):
    """A flat index of 200 random 16-d rows, and its features."""
    folder = tmp_path_factory.mktemp("pooled")
    rows = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    features = FeatureSet(paths(200), rows, POOLED)
    write_features(folder / "features.npz", features)
    ImageIndex(kind="flat").fit(features).save(folder / "index")
    return folder / "index", features


@pytest.fixture(scope="module")
def vocabulary_model(tmp_path_factory):
    """A stand-in for a toolkit model file: an HDF5 file whose metadata names four labels."""
    path = tmp_path_factory.mktemp("model") / "best_model.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["image_toolkit"] = json.dumps({"label_names": VOCABULARY, "image_size": 32})
    return path


@pytest.fixture(scope="module")
def scores_index(tmp_path_factory, vocabulary_model):
    """An hnsw index of 300 images' scores for the four labels; image i scores highest on label i % 4."""
    folder = tmp_path_factory.mktemp("scores")
    rng = np.random.default_rng(1)
    scores = rng.random((300, 4)).astype(np.float32) * 0.5
    scores[np.arange(300), np.arange(300) % 4] += 0.5
    features = FeatureSet(paths(300), scores, {"model": str(vocabulary_model), "output": "scores", "layer": "predictions"})
    write_features(folder / "scores.npz", features)
    assert CliRunner().invoke(index, ["build", str(folder / "scores.npz"), str(folder / "index"), "--quiet"]).exit_code == 0
    (folder / "vectors.txt").write_text(WORD_VECTORS)
    return folder, features


# Searching by feature rows.


def test_features_query_finds_exact_neighbours_in_order(runner, pooled_index, tmp_path):
    folder, features = pooled_index
    write_features(tmp_path / "queries.npz", FeatureSet(["q1.jpg", "q2.jpg"], features.features[[5, 9]] + 1e-3, POOLED))
    result = run(runner, folder, "--features", tmp_path / "queries.npz", "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["query"] for record in records] == ["q1.jpg", "q2.jpg"]
    assert [r["rank"] for r in records[0]["results"]] == [1, 2, 3]
    assert records[0]["results"][0]["path"] == "images/0005.jpg" and records[1]["results"][0]["path"] == "images/0009.jpg"
    assert records[0]["results"][0]["distance"] < 1e-4 <= records[0]["results"][1]["distance"]


def test_features_query_writes_csv(runner, pooled_index, tmp_path):
    folder, features = pooled_index
    write_features(tmp_path / "queries.h5", FeatureSet(paths(4, 100), features.features[100:104], POOLED))
    result = run(runner, folder, "--features", tmp_path / "queries.h5", "--output", tmp_path / "results.csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # --quiet
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and list(rows[0]) == ["query", "rank", "path", "distance"]
    assert rows[0]["query"] == rows[0]["path"] == "images/0100.jpg" and rows[0]["rank"] == "1"


def test_human_output_lists_rank_path_and_distance(runner, pooled_index, tmp_path):
    folder, features = pooled_index
    write_features(tmp_path / "q.npz", FeatureSet(["query.jpg"], features.features[:1], POOLED))
    result = run(runner, folder, "--features", tmp_path / "q.npz", "-k", 2)
    lines = result.stdout.splitlines()
    assert lines[0] == "query.jpg" and lines[1].split() == ["rank", "path", "distance"]
    assert lines[2].split()[:2] == ["1", "images/0000.jpg"] and len(lines) == 4


# Searching by keyword.


def test_keyword_query_on_a_hand_made_vocabulary(runner, scores_index):
    folder, features = scores_index
    result = run(runner, folder / "index", "--text", "sofa", "-k", 5, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["classes"] == [{"name": "sofa", "weight": 1.0, "word": "sofa"}]
    expected = np.argsort(-features.features[:, 0], kind="stable")[:5]
    assert [r["path"] for r in record["results"]] == [features.paths[i] for i in expected]
    np.testing.assert_allclose([r["score"] for r in record["results"]], features.features[expected, 0], rtol=1e-5)
    # Part of a name and a plural match too.
    record = json.loads(run(runner, folder / "index", "--text", "sharks", "--json").stdout)
    assert [c["name"] for c in record["classes"]] == ["tiger shark"]


def test_keyword_query_with_word_vectors_counts_similar_class_words(runner, scores_index):
    pytest.importorskip("gensim")
    folder, features = scores_index
    result = run(runner, folder / "index", "--text", "couch", "-k", 3, "--word_vectors", folder / "vectors.txt", "--json")
    assert result.exit_code == 0, result.output
    classes = json.loads(result.stdout)["classes"]
    similarity = 0.9 / np.sqrt(0.82)  # cos(couch, sofa) in WORD_VECTORS
    assert [c["name"] for c in classes] == ["sofa"] and classes[0]["word"] == "sofa"
    assert classes[0]["weight"] == pytest.approx(similarity, abs=1e-4)
    assert all(int(r["path"][7:11]) % 4 == 0 for r in json.loads(result.stdout)["results"])
    # 'fish' is near 'shark' (0.99) and 'kitten' is not within 0.5 of any class word but 'shark' and 'table'.
    result = run(runner, folder / "index", "--text", "fish", "--word_vectors", folder / "vectors.txt", "--json")
    assert [c["name"] for c in json.loads(result.stdout)["classes"]] == ["tiger shark"]
    text = run(runner, folder / "index", "--text", "couch", "-k", 1, "--word_vectors", folder / "vectors.txt").stdout
    assert text.splitlines()[0] == "'couch': classes sofa (0.99 via 'sofa')"


def test_word_vectors_in_binary_format(tmp_path, scores_index):
    gensim = pytest.importorskip("gensim")
    vectors = read_word_vectors(scores_index[0] / "vectors.txt")
    vectors.save_word2vec_format(str(tmp_path / "vectors.bin"), binary=True)
    binary = read_word_vectors(tmp_path / "vectors.bin")
    assert isinstance(binary, gensim.models.KeyedVectors) and binary.key_to_index == vectors.key_to_index
    matches = match_classes("couch", VOCABULARY, word_vectors=binary)
    assert [m.name for m in matches] == ["sofa"]


def test_keyword_query_on_imagenet_scores(runner, tmp_path):
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[3] == "tiger shark" and names[999] == "toilet tissue"
    scores = np.random.default_rng(2).dirichlet(np.full(1000, 0.05), size=50).astype(np.float32)
    write_features(tmp_path / "scores.npz", FeatureSet(paths(50), scores, IMAGENET_SCORES))
    ImageIndex(kind="ivf").fit(read_features(tmp_path / "scores.npz")).save(tmp_path / "index")
    result = run(runner, tmp_path / "index", "--text", "shark", "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert sorted(c["name"] for c in record["classes"]) == ["great white shark", "tiger shark"]
    combined = scores[:, 2] + scores[:, 3]
    assert [r["path"] for r in record["results"]] == [f"images/{i:04d}.jpg" for i in np.argsort(-combined)[:3]]


def test_scores_file_serves_keywords_for_an_index_of_other_features(runner, pooled_index, tmp_path):
    folder, features = pooled_index
    scores = np.zeros((250, 1000), dtype=np.float32)
    scores[42, 3] = 0.9  # images/0042.jpg is a tiger shark; images 200-249 are not in the index.
    scores[210, 3] = 1.0
    write_features(tmp_path / "scores.npz", FeatureSet(paths(250), scores, IMAGENET_SCORES))
    result = runner.invoke(search, [str(folder), "--text", "tiger shark", "--scores", str(tmp_path / "scores.npz"), "-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["path"] == "images/0042.jpg"


# Searching by image, with the model the index was built from.


@pytest.fixture(scope="module")
def image_index(tiny_set, tmp_path_factory):
    """Features of the 24 tiny images from a small_cnn trained one epoch, their index, and the model's scores."""
    root, _ = tiny_set
    folder = tmp_path_factory.mktemp("by_image")
    runner = CliRunner()
    args = ["--data_csv", str(root / "label.txt"), "--img_directory", str(root / "images"), "--output_dir", str(folder),
            "--backbone", "small_cnn", "--weights", "none", "--image_size", "32", "--epochs", "1", "--quiet"]
    assert runner.invoke(train, args).exit_code == 0
    model = folder / "best_model.h5"
    for command, name in ((get_transfer_layer, "features.npz"), (get_inception_output, "scores.npz")):
        result = runner.invoke(command, [str(root / "images"), str(folder / name), "--model", str(model), "--quiet"])
        assert result.exit_code == 0, result.output
    assert runner.invoke(index, ["build", str(folder / "features.npz"), str(folder / "index"), "--quiet"]).exit_code == 0
    return folder


def test_image_query_finds_the_image_itself_first(runner, tiny_set, image_index):
    images = tiny_set[0] / "images"
    result = run(runner, image_index / "index", "--image", images / "0005.png", "--image", images / "0017.png", "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["query"].endswith("0005.png") and first["results"][0]["path"] == "0005.png"
    assert second["results"][0]["path"] == "0017.png"
    assert first["results"][0]["distance"] < 1e-4


def test_keyword_query_on_a_toolkit_models_label_names(runner, image_index):
    scores = read_features(image_index / "scores.npz")
    result = run(runner, image_index / "index", "--text", "prime", "--scores", image_index / "scores.npz", "-k", 24, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["classes"] == [{"name": "prime", "weight": 1.0, "word": "prime"}]
    ranked = [r["path"] for r in record["results"]]
    assert ranked == [scores.paths[i] for i in np.argsort(-scores.features[:, 1], kind="stable")]


@pytest.fixture(scope="module")
def project(image_index, tiny_set, tmp_path_factory):
    """A project made from inside its folder with relative paths: --model models/best_model.h5, features, scores, index."""
    root = tmp_path_factory.mktemp("project") / "project"
    (root / "models").mkdir(parents=True)
    shutil.copy(image_index / "best_model.h5", root / "models" / "best_model.h5")
    shutil.copytree(tiny_set[0] / "images", root / "images")
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for command, name in ((get_transfer_layer, "features.npz"), (get_inception_output, "scores.npz")):
            result = runner.invoke(command, ["images", name, "--model", "models/best_model.h5", "--quiet"])
            assert result.exit_code == 0, result.output
        assert runner.invoke(index, ["build", "features.npz", "index", "--quiet"]).exit_code == 0
    return root


def test_image_and_keyword_queries_work_from_another_folder_after_a_relative_model(runner, project, tmp_path, monkeypatch):
    """search --image and serve's --scores: the model recorded as typed (relative) was lost from any other folder."""
    monkeypatch.chdir(tmp_path)
    result = run(runner, project / "index", "--image", project / "images" / "0005.png", "-k", 1, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["path"] == "0005.png"
    result = run(runner, project / "index", "--text", "prime", "--scores", project / "scores.npz", "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classes"][0]["name"] == "prime"
    from image_toolkit.data_tools.web.app import Collection  # What toolkit serve --scores loads.

    collection = Collection(project / "index", project / "images", scores=project / "scores.npz")
    assert collection.vocabulary is not None and "prime" in collection.vocabulary


def test_image_query_finds_the_model_of_a_project_moved_whole(runner, project, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.copytree(project, moved)
    project.rename(project.with_name("away"))  # The recorded absolute path no longer exists.
    try:
        monkeypatch.chdir(tmp_path)
        result = run(runner, moved / "index", "--image", moved / "images" / "0017.png", "-k", 1, "--json")
    finally:
        project.with_name("away").rename(project)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["path"] == "0017.png"


def test_image_query_whose_model_is_gone_names_searchs_own_options(runner, tiny_set, tmp_path):
    """Not 'pass --model_weights' (search has no such option): the missing model file, and --features."""
    metadata = {"model": str(tmp_path / "gone" / "best_model.h5"), "output": "pooled", "layer": "head_dense",
                "image_size": 32, "weights": "model file"}
    write_features(tmp_path / "features.npz", FeatureSet(paths(20), np.eye(20, 8, dtype=np.float32) + 1, metadata))
    ImageIndex(kind="flat").fit(read_features(tmp_path / "features.npz")).save(tmp_path / "index")
    result = run(runner, tmp_path / "index", "--image", tiny_set[0] / "images" / "0005.png")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert f"{tmp_path / 'gone' / 'best_model.h5'}: the model file the index" in line
    assert "nor at" in line and "--features FILE" in line and "--model" not in line


def test_unreadable_query_image(runner, pooled_index, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    result = run(runner, pooled_index[0], "--image", tmp_path / "broken.jpg")
    assert result.exit_code == 1
    assert "broken.jpg: cannot decode" in one_line_error(result)


# Bad input.


def test_missing_index_dir(runner, tmp_path):
    result = run(runner, tmp_path / "nowhere", "--text", "sofa")
    assert result.exit_code == 2 and "does not exist" in one_line_error(result)


def test_corrupt_index_dir(runner, pooled_index, tmp_path):
    shutil.copytree(pooled_index[0], tmp_path / "index")
    (tmp_path / "index" / "set-1" / "index.faiss").write_bytes(b"\x00" * 100)
    result = run(runner, tmp_path / "index", "--text", "sofa")
    assert result.exit_code == 1 and "index.faiss: not a readable faiss index" in one_line_error(result)


def test_query_features_of_another_dimension(runner, pooled_index, tmp_path):
    write_features(tmp_path / "wide.npz", FeatureSet(["q.jpg"], np.ones((1, 32), dtype=np.float32), POOLED))
    result = run(runner, pooled_index[0], "--features", tmp_path / "wide.npz")
    assert result.exit_code == 1
    assert "wide.npz: 32 features per row, but the index has 16" in one_line_error(result)


def test_k_below_one_is_refused(runner, pooled_index):
    result = run(runner, pooled_index[0], "--text", "sofa", "-k", "0")
    assert result.exit_code == 2 and "-k" in one_line_error(result)


def test_k_above_the_index_size_is_clamped_with_a_warning(runner, pooled_index, tmp_path):
    folder, features = pooled_index
    write_features(tmp_path / "q.npz", FeatureSet(["q.jpg"], features.features[:1], POOLED))
    with pytest.warns(UserWarning, match="k=500 is more than the 200 indexed images; returning all 200"):
        result = run(runner, folder, "--features", tmp_path / "q.npz", "-k", 500, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["results"]) == 200


def test_text_query_k_above_the_scored_images_is_clamped_with_a_warning(runner, scores_index):
    folder, features = scores_index
    n = len(features.paths)
    with pytest.warns(UserWarning, match=f"k=10000 is more than the {n} images with scores; returning all {n}"):
        result = run(runner, folder / "index", "--text", "sofa", "-k", 10000, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["results"]) == n


def test_library_refuses_k_below_one(pooled_index, scores_index):
    index = ImageIndex.load(pooled_index[0])
    with pytest.raises(OptionError, match="k must be at least 1. Received: k=0"):
        index.search(pooled_index[1].features[:1], k=0)
    with pytest.raises(OptionError, match="k must be at least 1. Received: k=-2"):
        rank_by_classes(scores_index[1].features, match_classes("sofa", VOCABULARY), k=-2)


def test_text_query_without_a_vocabulary(runner, pooled_index):
    result = run(runner, pooled_index[0], "--text", "sofa")
    assert result.exit_code == 1
    message = one_line_error(result)
    assert "pooled features of resnet50, not class scores" in message and "--scores" in message


def test_keyword_without_a_match_lists_the_closest_class_names(runner, scores_index):
    folder, _ = scores_index
    result = run(runner, folder / "index", "--text", "sofas bed")
    assert result.exit_code == 1
    assert "no class name matches 'sofas bed'. Closest class names: sofa" in one_line_error(result)
    assert "Give --word-vectors to match synonyms too." in one_line_error(result)


def test_keyword_outside_the_word_vectors(runner, scores_index):
    pytest.importorskip("gensim")
    folder, _ = scores_index
    result = run(runner, folder / "index", "--text", "zebra", "--word_vectors", folder / "vectors.txt")
    assert result.exit_code == 1
    assert "no class name matches 'zebra'. 'zebra' is not in vectors.txt. Closest class names:" in one_line_error(result)


def test_word_vectors_file_that_is_not_word2vec(runner, scores_index, tmp_path):
    pytest.importorskip("gensim")
    (tmp_path / "vectors.txt").write_text("this is not\na word2vec file\n")
    result = run(runner, scores_index[0] / "index", "--text", "sofa", "--word_vectors", tmp_path / "vectors.txt")
    assert result.exit_code == 1 and "vectors.txt: not a word2vec file" in one_line_error(result)


@pytest.mark.parametrize("args", [[], ["--text", "a", "--features", "x.npz"], ["--features", "x.npz", "--scores", "x.npz"]])
def test_exactly_one_query_is_a_usage_rule(runner, pooled_index, tmp_path, args):
    write_features(tmp_path / "x.npz", FeatureSet(["q.jpg"], np.ones((1, 16), dtype=np.float32), POOLED))
    result = runner.invoke(search, [str(pooled_index[0]), *[str(tmp_path / a) if a.endswith(".npz") else a for a in args]])
    assert result.exit_code == 2
    assert "exactly one of" in one_line_error(result) or "apply to --text only" in one_line_error(result)


def test_features_and_text_searches_load_no_tensorflow(pooled_index, scores_index, tmp_path):
    write_features(tmp_path / "q.npz", FeatureSet(["q.jpg"], pooled_index[1].features[:1], POOLED))
    code = (
        "import sys; from click.testing import CliRunner; from image_toolkit.cli.main import toolkit; "
        f"a = CliRunner().invoke(toolkit, ['search', {str(pooled_index[0])!r}, '--features', {str(tmp_path / 'q.npz')!r}]); "
        f"b = CliRunner().invoke(toolkit, ['search', {str(scores_index[0] / 'index')!r}, '--text', 'sofa']); "
        "assert a.exit_code == b.exit_code == 0, a.output + b.output; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "False False", done.stderr


def test_library_keyword_errors_name_the_fix():
    with pytest.raises(DataError, match="Closest class names: tiger shark"):
        match_classes("tiger shrak", VOCABULARY)
