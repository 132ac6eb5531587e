"""Similarity learning on real digits: Siamese types B/C/D and SimCLR learn, reload, resume, refuse bad input."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from image_toolkit.cli.extract import get_transfer_layer
from image_toolkit.cli.similarity import assess, filter_images, make_metadata, train_siamese, train_simclr
from image_toolkit.data_tools.formats.features import read_features
from image_toolkit.data_tools.make_demo_data import write_digit_folders
from image_toolkit.data_tools.search.retrieval import retrieval_scores
from tests.conftest import class_folders, one_line_error

SMALL = ["--backbone", "small_cnn", "--image_size", "32", "--embedding_dim", "32", "--quiet"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """1,000 real digits in class folders, 30 % held out as the retrieval gallery."""
    root = write_digit_folders(tmp_path_factory.mktemp("folders"), n_images=1000, image_size=32, seed=3)
    result = CliRunner().invoke(make_metadata, [str(root), str(root / "metadata.csv"), "--test_split", "0.3"])
    assert result.exit_code == 0, result.output
    return root


def untrained_recall(root, **tower_options):
    return retrieval_scores(*untrained_embeddings(root, **tower_options))


def untrained_embeddings(root, **tower_options):
    """An untrained small_cnn tower's embeddings of the test split, and their classes."""
    from image_toolkit.models.backbones import get_backbone
    from image_toolkit.models.embedding import EmbeddingTower
    from image_toolkit.models.extraction import compute_features, keras_extractor
    from image_toolkit.models.runtime import keras

    keras.utils.set_random_seed(0)
    tower = EmbeddingTower("small_cnn", image_size=32, embedding_dim=32, **tower_options)
    gallery = pd.read_csv(root / "metadata.csv").query("split == 'test'")
    extractor = keras_extractor(tower, get_backbone("small_cnn").preprocess, 32, {})
    embeddings = compute_features(extractor, [root / image for image in gallery["image"]], verbose=0)
    return embeddings, gallery["class"].to_numpy()


def run(command, *args):
    result = CliRunner().invoke(command, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def siamese_d(digits, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("siamese_d")
    summary = run(train_siamese, digits / "metadata.csv", "--type", "d", "--margin", "0.5", "--epochs", "6",
                  "--batch_size", "64", "--output_dir", output_dir, "--tensorboard", output_dir / "logs", *SMALL)
    return output_dir, summary


def test_make_metadata_splits_every_class(digits):
    frame = pd.read_csv(digits / "metadata.csv")
    assert len(frame) == 1000 and set(frame.columns) == {"image", "class", "split", "root"} and set(frame["root"]) == {"."}
    shares = frame.groupby("class")["split"].apply(lambda s: (s == "test").mean())
    assert shares.between(0.2, 0.4).all()



@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("test_split", [0.2, 0.6])
def test_make_metadata_keeps_classes_of_one_or_two_images_in_training(tmp_path, runner, seed, test_split):
    root = class_folders(tmp_path / "photos", {"many": 20, "some": 10, "two": 2, "one": 1})
    args = [str(root), str(tmp_path / "m.csv"), "--test_split", str(test_split), "--seed", str(seed)]
    assert runner.invoke(make_metadata, args).exit_code == 0
    frame = pd.read_csv(tmp_path / "m.csv")
    train = frame[frame["split"] == "train"]["class"].value_counts()
    assert train["one"] == 1 and train["two"] >= 1
    test = frame[frame["split"] == "test"]["class"].value_counts()
    assert abs(test["many"] - 20 * test_split) <= 1 and abs(test["some"] - 10 * test_split) <= 1  # stratified
    assert runner.invoke(make_metadata, [*args[:1], str(tmp_path / "again.csv"), *args[2:]]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again.csv"), frame)


def test_siamese_type_d_learns_digit_similarity(siamese_d, digits):
    output_dir, summary = siamese_d
    before = untrained_recall(digits, normalize=True)
    assert summary["val_recall@1"] >= 0.85, summary
    assert summary["val_recall@1"] >= before["recall@1"] + 0.15, (summary, before)
    history = pd.read_csv(output_dir / "history.csv")
    assert {"val_recall@1", "val_recall@5", "val_recall@10", "val_map@r"} <= set(history.columns)
    for name in ["embedding_model.keras", "curves.png", "run.json", "last_checkpoint.epoch0006.keras"]:
        assert (output_dir / name).is_file(), name


def test_simclr_learns_without_labels(digits, tmp_path):
    # 20 epochs (about 40 s on two cores) measured 5-NN 0.91 and recall@1 0.92, from 0.67 and 0.69 untrained.
    summary = run(train_simclr, digits / "metadata.csv", "--epochs", "20", "--batch_size", "64", "--temperature", "0.1",
                  "--output_dir", tmp_path, *SMALL)
    before = untrained_recall(digits)
    assert summary["val_knn_accuracy"] >= 0.85, summary
    assert summary["val_knn_accuracy"] >= before["knn_accuracy"] + 0.15, (summary, before)


def test_tensorboard_logs_the_retrieval_scores_of_every_epoch(siamese_d):
    from tests.test_evaluate import scalar_tags

    output_dir, _ = siamese_d
    assert "epoch_loss" in scalar_tags(output_dir / "logs" / "train")
    # Keras files the val_ metrics under validation/, without the prefix.
    assert "epoch_recall@1" in scalar_tags(output_dir / "logs" / "validation")


@pytest.mark.parametrize(("siamese_type", "backbone"), [("b", "small_cnn"), ("c", "small_cnn"), ("b", "resnet18")])
def test_siamese_types_b_and_c_train(digits, tmp_path, siamese_type, backbone):
    summary = run(train_siamese, digits / "metadata.csv", "--type", siamese_type, "--epochs", "1", "--batch_size", "64",
                  "--output_dir", tmp_path, "--classes_per_batch", "4", "--examples_per_class", "8", *SMALL,
                  "--backbone", backbone)
    assert summary["epochs"] == 1 and "val_recall@1" in summary
    assert json.loads((tmp_path / "run.json").read_text())["options"]["backbone"] == backbone


def test_tower_reloads_in_a_fresh_process_with_the_same_embeddings(siamese_d, digits, tmp_path):
    output_dir, _ = siamese_d
    model = output_dir / "embedding_model.keras"
    summary = run(get_transfer_layer, digits, tmp_path / "emb.npz", "--model", model)
    features = read_features(tmp_path / "emb.npz")
    assert summary["dim"] == 32 and np.allclose(np.linalg.norm(features.features, axis=1), 1, atol=1e-4)
    # Plain Keras loads the tower: no toolkit module is imported before load_model.
    code = (
        "import sys, numpy as np, keras; from PIL import Image; "
        f"m = keras.models.load_model(r'{model}'); "
        "assert not [name for name in sys.modules if name.split('.')[0] in ('models', 'data_tools', 'cli')]; "
        f"x = np.asarray(Image.open(r'{digits / features.paths[0]}').convert('RGB'), dtype='float32')[None]; "
        "print(' '.join(map(str, m.predict(x / 127.5 - 1, verbose=0)[0])))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.array(done.stdout.split(), dtype=np.float32), features.features[0], atol=1e-4)


def test_assess_scores_and_draws(siamese_d, digits, tmp_path):
    output_dir, summary = siamese_d
    scores = run(assess, output_dir / "embedding_model.keras", digits / "metadata.csv", "--output_dir", tmp_path)
    assert scores["recall@1"] == pytest.approx(summary["val_recall@1"], abs=1e-3)
    assert {"knn_accuracy", "recall@5", "recall@10", "map@r"} <= scores.keys()
    assert (tmp_path / "similarity_heatmap.png").is_file() and (tmp_path / "query_grid.png").is_file()


def test_history_has_clustering_scores_of_every_epoch_above_the_untrained_tower(siamese_d, digits):
    from image_toolkit.data_tools.search.retrieval import clustering_scores

    history = pd.read_csv(siamese_d[0] / "history.csv")
    assert history[["val_nmi", "val_ari"]].notna().all().all() and history[["val_nmi", "val_ari"]].stack().between(0, 1).all()
    embeddings, classes = untrained_embeddings(digits, normalize=True)
    before = clustering_scores(embeddings, classes)
    last = history.iloc[-1]
    # Measured: NMI 0.67, ARI 0.50 after 6 epochs (0.22, 0.08 after the first); the untrained tower 0.31, 0.14.
    assert last["val_nmi"] >= 0.6 and last["val_nmi"] >= before["nmi"] + 0.2, (last, before)
    assert last["val_ari"] >= 0.4 and last["val_ari"] >= before["ari"] + 0.2, (last, before)


def test_assess_search_through_a_flat_index_scores_as_the_exhaustive_search(siamese_d, digits, tmp_path):
    """The test split's embeddings in a flat (exact) index: the index's answers score as leave-one-out does."""
    from image_toolkit.cli.extract import get_transfer_layer
    from image_toolkit.cli.index import index

    model = siamese_d[0] / "embedding_model.keras"
    table = pd.read_csv(digits / "metadata.csv")
    table.assign(root=str(digits.resolve())).query("split == 'test'").to_csv(tmp_path / "test.csv", index=False)
    run(get_transfer_layer, tmp_path / "test.csv", tmp_path / "test.npz", "--model", model)
    run(index, "build", tmp_path / "test.npz", tmp_path / "flat", "--kind", "flat")
    scores = run(assess, model, digits / "metadata.csv", "--output_dir", tmp_path, "--search", tmp_path / "flat")
    assert scores["index_queries"] == scores["index_images"] == scores["images"] and scores["index_unlabelled"] == 0
    for name in ("recall@1", "recall@5", "recall@10", "map@r", "knn_accuracy"):
        assert scores[f"index_{name}"] == pytest.approx(scores[name], abs=1e-3), name
        assert scores[f"exact_{name}"] == pytest.approx(scores[name], abs=1e-3), name
    assert 0 <= scores["ari"] <= scores["nmi"] <= 1


def test_assess_linear_probe_scores_the_embeddings_beside_knn(siamese_d, digits, tmp_path):
    output_dir, _ = siamese_d
    scores = run(assess, output_dir / "embedding_model.keras", digits / "metadata.csv", "--output_dir", tmp_path, "--linear_probe")
    # Trained digit embeddings: a linear model separates the ten classes about as well as kNN (chance: 0.1).
    assert scores["linear_accuracy"] >= 0.8 and scores["linear_macro_f1"] >= 0.8
    assert scores["linear_accuracy"] == pytest.approx(scores["knn_accuracy"], abs=0.1)


def test_resume_continues_and_refuses_changed_options(digits, tmp_path, runner):
    args = [str(digits / "metadata.csv"), "--type", "b", "--batch_size", "64", "--output_dir", str(tmp_path), *SMALL]
    assert runner.invoke(train_siamese, [*args, "--epochs", "1"]).exit_code == 0
    assert runner.invoke(train_siamese, [*args, "--epochs", "2", "--resume"]).exit_code == 0
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [0, 1]
    changed = runner.invoke(train_siamese, [*args, "--epochs", "3", "--resume", "--margin", "2"])
    assert changed.exit_code == 2
    assert "used --margin 1.0, this one 2.0" in one_line_error(changed)
    changed = runner.invoke(train_siamese, [*args, "--epochs", "3", "--resume", "--type", "c"])
    assert changed.exit_code == 2
    assert "used --type b, this one c" in one_line_error(changed)


def test_filter_images_reports_each_step(digits, tmp_path, runner):
    result = runner.invoke(filter_images, [str(digits), str(tmp_path / "kept"), "--min_size", "16", "--min_per_class", "95", "--resize", "24"])
    assert result.exit_code == 0, result.output
    kept = pd.read_csv(tmp_path / "kept" / "metadata.csv")
    counts = pd.read_csv(digits / "metadata.csv")["class"].value_counts()
    assert set(kept["class"]) == set(counts[counts >= 95].index)
    assert "at least 16 px" in result.output and "classes with at least 95 images" in result.output


def test_filter_images_copies_files_as_they_are_and_lists_unreadable_ones(digits, tmp_path, runner):
    source = tmp_path / "source"
    originals = sorted((digits / "zero").iterdir())[:3] + sorted((digits / "one").iterdir())[:3]
    for original in originals:
        (source / original.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(original, source / original.parent.name / original.name)
    (source / "one" / "broken.png").write_text("not an image")
    result = runner.invoke(filter_images, [str(source), str(tmp_path / "kept"), "--min_size", "16", "--min_per_class", "2"])
    assert result.exit_code == 0, result.output
    for original in originals:
        assert (tmp_path / "kept" / original.parent.name / original.name).read_bytes() == original.read_bytes()
    assert "broken.png" in (tmp_path / "kept" / "skipped_images.txt").read_text()
    assert len(pd.read_csv(tmp_path / "kept" / "metadata.csv")) == 6


def small_photos(root, counts, size=20):
    """Class sub-folders of real PNGs, `size` px square."""
    from PIL import Image

    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (size, size), (10 * i, 50, 90)).save(root / name / f"{i}.png")
    return root


def test_filter_images_that_keeps_nothing_leaves_no_output_folder(tmp_path, runner):
    source = small_photos(tmp_path / "faces", {"ann": 3, "bob": 2})
    (source / "bob" / "broken.png").write_text("not an image")
    result = runner.invoke(filter_images, [str(source), str(tmp_path / "faces_clean" / "v1"), "--min_size", "100", "--min_per_class", "1"])
    assert result.exit_code == 1
    message = one_line_error(result)
    assert "no image passes the filters" in message and "at least 100 px on both sides: 0" in message
    assert not (tmp_path / "faces_clean").exists()


@pytest.mark.parametrize(
    "output, message",
    [
        (lambda source: source, "is IMAGE_DIR"),
        (lambda source: source / ".." / source.name, "is IMAGE_DIR"),
        (lambda source: source / "clean", "is inside IMAGE_DIR"),
        (lambda source: source / "ann" / "clean", "is inside IMAGE_DIR"),
        (lambda source: source.parent, "contains IMAGE_DIR"),
    ],
)
def test_filter_images_refuses_an_output_folder_overlapping_the_images(tmp_path, runner, output, message):
    source = small_photos(tmp_path / "faces", {"ann": 3, "bob": 2})
    def tree():
        return {path: path.read_bytes() if path.is_file() else None for path in tmp_path.rglob("*")}

    before = tree()
    result = runner.invoke(filter_images, [str(source), str(output(source)), "--min_size", "8", "--min_per_class", "1", "--resize", "8"])
    assert result.exit_code == 2
    assert message in one_line_error(result)
    assert tree() == before  # nothing overwritten, nothing added


@pytest.mark.parametrize(
    "make_args, code, message",
    [
        (lambda root, t: [t / "noclass.csv"], 1, "no 'class' column"),
        (lambda root, t: [t / "lonely.csv", "--img_directory", root], 1, "has one image, so no positive pair"),
        (lambda root, t: [root / "metadata.csv", "--classes_per_batch", "11", "--examples_per_class", "2"], 2, "more than the 10 classes"),
    ],
)
def test_bad_siamese_input(digits, tmp_path, runner, make_args, code, message):
    frame = pd.read_csv(digits / "metadata.csv")
    frame[["image", "split"]].to_csv(tmp_path / "noclass.csv", index=False)
    lonely = frame[frame["split"] == "train"].head(20).copy()
    lonely.iloc[0, lonely.columns.get_loc("class")] = "unique"
    lonely.to_csv(tmp_path / "lonely.csv", index=False)
    args = [*map(str, make_args(digits, tmp_path)), "--type", "b", "--epochs", "1", "--output_dir", str(tmp_path / "out"), *SMALL]
    result = runner.invoke(train_siamese, args)
    assert result.exit_code == code, result.output
    assert message in one_line_error(result)
    assert not (tmp_path / "out").exists(), "a refused run left an output folder"


def test_temperature_must_be_positive(digits, tmp_path, runner):
    result = runner.invoke(train_simclr, [str(digits / "metadata.csv"), "--temperature", "0", *SMALL, "--output_dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--temperature" in one_line_error(result)


def test_unreadable_images_are_skipped_and_listed(digits, tmp_path, runner):
    frame = pd.read_csv(digits / "metadata.csv")
    (tmp_path / "broken.png").write_text("no")
    extra = pd.DataFrame({"image": [str(tmp_path / "broken.png")], "class": ["zero"], "split": ["train"]})
    pd.concat([frame, extra]).to_csv(tmp_path / "with_broken.csv", index=False)
    result = runner.invoke(train_siamese, [str(tmp_path / "with_broken.csv"), "--img_directory", str(digits), "--epochs", "1",
                                           "--batch_size", "64", "--output_dir", str(tmp_path / "out"), *SMALL])
    assert result.exit_code == 0, result.output
    assert "broken.png" in (tmp_path / "out" / "skipped_images.txt").read_text()


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_every_embedding_model_saves_and_reloads(tmp_path, suffix):
    from image_toolkit.models.embedding import EmbeddingTower, SiameseNetwork, SimCLR
    from image_toolkit.models.runtime import keras

    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    tower = EmbeddingTower("resnet18", image_size=32, embedding_dim=8, normalize=True)
    models = {"tower": tower, "siamese": SiameseNetwork(tower, siamese_type="d", classes=3)}
    if suffix == ".keras":  # a subclassed model saves as .keras only, as in Keras itself
        models["simclr"] = SimCLR(EmbeddingTower("small_cnn", image_size=32, embedding_dim=8), projection_dim=4)
        models["simclr"](images)
    for name, model in models.items():
        inputs = {"image_a": images, "image_b": images[::-1]} if name == "siamese" else images
        model.save(tmp_path / f"{name}{suffix}")
        again = keras.models.load_model(tmp_path / f"{name}{suffix}")
        expected, actual = model.predict(inputs, verbose=0), again.predict(inputs, verbose=0)
        for key in expected if isinstance(expected, dict) else [None]:
            np.testing.assert_allclose(actual[key] if key else actual, expected[key] if key else expected, atol=1e-5)


ONE_CLASS = lambda frame: frame["class"] == "five"  # noqa: E731
ONE_HELD_OUT_CLASS = lambda frame: (frame["split"] == "train") | (frame["class"] == "five")  # noqa: E731


@pytest.mark.parametrize(
    "command, keep, message",
    [
        (train_siamese, ONE_CLASS, "every training image is of class 'five'; Siamese training"),
        (train_siamese, ONE_HELD_OUT_CLASS, "every held-out image is of class 'five'; the retrieval evaluation"),
        (train_simclr, ONE_HELD_OUT_CLASS, "every held-out image is of class 'five'; the retrieval evaluation"),
    ],
    ids=["siamese-one-class", "siamese-one-held-out-class", "simclr-one-held-out-class"],
)
def test_one_class_is_refused_rather_than_scored_perfect(digits, tmp_path, runner, command, keep, message):
    """With one class every neighbour matches: recall@1 and mAP@R would read 1.0 whatever the model."""
    frame = pd.read_csv(digits / "metadata.csv")
    frame[keep(frame)].to_csv(tmp_path / "one.csv", index=False)
    args = [str(tmp_path / "one.csv"), "--img_directory", str(digits), "--epochs", "1", "--output_dir", str(tmp_path / "out"), *SMALL]
    result = runner.invoke(command, args)
    assert result.exit_code == 1, result.output
    line = one_line_error(result)
    assert "one.csv" in line and message in line and "needs at least two classes" in line
    assert not (tmp_path / "out").exists(), "a refused run left an output folder"


def test_assess_refuses_a_split_of_one_class(siamese_d, digits, tmp_path, runner):
    frame = pd.read_csv(digits / "metadata.csv")
    frame[ONE_CLASS(frame)].to_csv(tmp_path / "one.csv", index=False)
    result = runner.invoke(assess, [str(siamese_d[0] / "embedding_model.keras"), str(tmp_path / "one.csv"),
                                    "--img_directory", str(digits), "--output_dir", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "one.csv: every image of split 'test' is of class 'five'; scoring retrieval needs at least two" in one_line_error(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["assess", "get-transfer-layer"])
def test_a_truncated_embedding_model_is_called_truncated(siamese_d, digits, tmp_path, runner, command):
    """Keras calls a .keras archive it cannot open 'File not found'; the file is there, cut short."""
    from image_toolkit.cli.main import toolkit

    content = (siamese_d[0] / "embedding_model.keras").read_bytes()
    model = tmp_path / "cut.keras"
    model.write_bytes(content[: len(content) // 2])
    args = {"assess": ["assess", str(model), str(digits / "metadata.csv"), "--output_dir", str(tmp_path / "out")],
            "get-transfer-layer": ["get-transfer-layer", str(digits), str(tmp_path / "out.npz"), "--model", str(model)]}
    result = runner.invoke(toolkit, args[command])
    assert result.exit_code == 1, result.output
    line = one_line_error(result)
    assert f"{model}: not a complete Keras model file (truncated or damaged)" in line and "File not found" not in line


@pytest.mark.parametrize("output", ["afile", "afile/sub"])
def test_an_output_folder_that_is_a_file_is_one_line(digits, tmp_path, runner, output):
    (tmp_path / "afile").write_text("my notes")
    args = [str(digits / "metadata.csv"), "--epochs", "1", "--output_dir", str(tmp_path / output), *SMALL]
    result = runner.invoke(train_siamese, args)
    assert result.exit_code in (1, 2), result.output
    assert f"{tmp_path / 'afile'}" in one_line_error(result) and "is a file" in one_line_error(result)
    assert (tmp_path / "afile").read_text() == "my notes"
