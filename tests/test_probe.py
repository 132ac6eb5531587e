"""`toolkit probe`: a linear probe on digits pixels learns, predicts through `toolkit predict`, refuses bad input."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from image_toolkit.cli.extract import get_transfer_layer
from image_toolkit.cli.predict import predict
from image_toolkit.cli.probe import probe
from image_toolkit.data_tools.formats.features import FeatureSet, read_features, write_features
from image_toolkit.data_tools.formats.labels import read_label_csv
from image_toolkit.models.probe import f1_scores, fit_linear_probe
from tests.conftest import one_line_error

FIT = fit_linear_probe


def run(command, *args):
    result = CliRunner().invoke(command, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.strip().splitlines()]


@pytest.fixture(scope="module")
def pixels(digits_set):
    """The 1,000 digits' pixels at 16 px (768 values: fast to fit) and a multiclass label CSV of their digit."""
    root, table = digits_set
    features = root / "pixels16.npz"
    run(get_transfer_layer, root / "images", features, "--model", "pixels", "--image_size", "16", "--quiet")
    pd.DataFrame({"image": table["image"], "label": table["digit_name"]}).to_csv(root / "digits.csv", index=False)
    return root, features


@pytest.fixture(scope="module")
def probed(pixels, tmp_path_factory):
    """A multiclass probe of the digits' pixels: (output folder, summary, the fitted LinearProbe the command saved)."""
    from image_toolkit.models import probe as library

    root, features = pixels
    output_dir = tmp_path_factory.mktemp("probe")
    fitted = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(library, "fit_linear_probe", lambda *args, **kwargs: fitted.append(FIT(*args, **kwargs)) or fitted[-1])
        [summary] = run(probe, features, "--data_csv", root / "digits.csv", "--task", "multiclass", "--output_dir", output_dir, "--quiet")
    return output_dir, summary, fitted[0]


def test_probe_on_pixels_learns_digits_and_predicts_through_toolkit_predict(pixels, probed):
    root, _ = pixels
    output_dir, summary, _ = probed
    # Pixels LR on digits reaches about 0.9; shuffled labels or a constant model score about 0.1.
    assert summary["val_macro_f1"] >= 0.85 and summary["n_val"] == 200
    val = pd.read_csv(output_dir / "val.csv")
    rows = run(predict, *[root / "images" / image for image in val["image"]], "--model", output_dir / "best_model.h5")
    accuracy = np.mean([row["labels"] == [label] for row, label in zip(rows, val["label"])])
    assert accuracy == pytest.approx(summary["val_micro_f1"], abs=0.011)  # micro-F1 is accuracy; predict rounds nothing that matters
    assert json.loads((output_dir / "run.json").read_text())["status"] == "finished"


def test_saved_probe_gives_scikit_learns_probabilities(pixels, probed):
    """The scaler folded into the Dense layer: the Keras model on images = scikit-learn's predict_proba on the stored features."""
    from image_toolkit.models.inference import classifier_probabilities, load_classifier

    root, features_path = pixels
    output_dir, _, fitted = probed
    val = read_label_csv(output_dir / "val.csv", "multiclass")
    features = read_features(features_path)
    index = {path: row for row, path in enumerate(features.paths)}
    scaler, basis, model = fitted.estimators[0]
    scaled = scaler.transform(features.features[[index[i] for i in val.images]])
    expected = model.predict_proba(scaled if basis is None else scaled @ basis)
    keras_model, metadata = load_classifier(output_dir / "best_model.h5")
    assert metadata["head"] == "linear" and metadata["preprocess"] == "pixels"
    np.testing.assert_allclose(classifier_probabilities([root / "images" / i for i in val.images], keras_model, metadata),
                               expected, atol=1e-4)


def test_multilabel_probe_fits_each_label_on_its_known_cells(digits_set, pixels):
    root, features_path = pixels
    labels = read_label_csv(root / "label.txt")
    assert np.isnan(labels.labels).any()
    features = read_features(features_path)
    index = {path: row for row, path in enumerate(features.paths)}
    x = features.features[[index[i] for i in labels.images]]
    fitted = fit_linear_probe(x[:200], labels.labels[:200], "multilabel")  # fewer rows than pixels: fitted in their span
    scores = f1_scores(labels.labels[200:], fitted.predict_proba(x[200:]), "multilabel")
    assert scores["macro_f1"] >= 0.8 and len(fitted.C) == 4


def test_rows_that_do_not_match_the_label_csv_are_one_line(pixels, tmp_path, runner):
    root, features_path = pixels
    features = read_features(features_path)
    write_features(tmp_path / "part.npz", FeatureSet(features.paths[:-3], features.features[:-3], features.metadata))
    result = runner.invoke(probe, [str(tmp_path / "part.npz"), "--data-csv", str(root / "digits.csv"), "--task", "multiclass",
                                   "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "3 of 1000 labelled images" in line and "--append" in line and any(f"'{path}'" in line for path in features.paths[-3:])
    assert not (tmp_path / "out").exists()


def test_features_without_metadata_are_one_line(pixels, tmp_path, runner):
    root, features_path = pixels
    features = read_features(features_path)
    np.savez(tmp_path / "bare.npz", paths=np.array(features.paths), features=features.features)
    result = runner.invoke(probe, [str(tmp_path / "bare.npz"), "--data-csv", str(root / "digits.csv"), "--task", "multiclass",
                                   "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "bare.npz" in one_line_error(result) and "metadata" in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_a_label_csv_with_no_usable_rows_is_one_line(pixels, tmp_path, runner):
    root, features_path = pixels
    (tmp_path / "blank.csv").write_text("image,even,prime\n0000.png,,\n0001.png,,\n")
    result = runner.invoke(probe, [str(features_path), "--data-csv", str(tmp_path / "blank.csv"), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "blank.csv" in one_line_error(result) and "0 labelled" in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_evaluate_scores_a_saved_probe_as_the_probe_scored_itself(pixels, probed, tmp_path):
    """`toolkit evaluate` takes a probe as any classifier; on the validation list it gives the probe's own macro-F1."""
    from image_toolkit.cli.evaluate import evaluate

    root, _ = pixels
    output_dir, summary, _ = probed
    [report] = run(evaluate, output_dir / "best_model.h5", output_dir / "val.csv", "--img_directory", root / "images",
                   "--output_dir", tmp_path / "evaluation", "--quiet")
    assert report["macro_f1"] == pytest.approx(summary["val_macro_f1"], abs=0.011)
    assert (tmp_path / "evaluation" / "confusion.png").is_file()
