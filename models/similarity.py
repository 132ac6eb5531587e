"""Train embeddings: `toolkit train-siamese` and `toolkit train-simclr`, and load them back.

Both runs follow the classifier's shape: check the data, build the pipeline
and the model, fit with a retrieval evaluation and checkpoints every epoch
(so `--resume` works), then write `embedding_model.keras` (the tower alone,
the best epoch by validation recall@1), `history.csv`, `curves.png` and
`run.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from image_toolkit.data_tools.atomic import atomic_path
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.background import parse_background
from image_toolkit.data_tools.formats.images import check_images, find_images, report_skipped, require_readable
from image_toolkit.data_tools.formats.metadata import read_metadata
from image_toolkit.data_tools.maps.plots import plot_training_curves
from image_toolkit.data_tools.names import STRATEGIES
from image_toolkit.models.augment import simclr_view
from image_toolkit.models.backbones import get_backbone
from image_toolkit.models.callbacks import RetrievalEvaluation, TrainingCheckpoints
from image_toolkit.models.embedding import SIAMESE_TYPES, EmbeddingTower, SiameseNetwork, SimCLR
from image_toolkit.models.inference import load_embedding_model
from image_toolkit.models.losses import ContrastiveLoss
from image_toolkit.models.pairs import balanced_batches, require_pairs, sample_pairs
from image_toolkit.models.pipeline import image_dataset, pair_dataset, views_dataset
from image_toolkit.models.runs import HISTORY_FILE, begin_run, check_resumable, write_run_record
from image_toolkit.models.runtime import (
    check_strategy_options,
    check_tensorboard,
    distributed_input,
    distribution_strategy,
    fitting,
    is_chief,
    keras,
    tensorboard_callbacks,
    worker_output_dir,
)

logger = logging.getLogger(__name__)

EMBEDDING_FILE = "embedding_model.keras"
# Share of an assessed split the linear probe is scored on (fitted on the rest): half, so both parts hold every class.
LINEAR_HELD_OUT = 0.5
READABLE_FIX = (
    "a metadata CSV's image paths are relative to its 'root' column (written by make-metadata) or, without one, "
    "to the CSV's folder; pass --img-directory with the folder they are relative to"
)


@dataclasses.dataclass(frozen=True)
class SimilarityOptions:
    """Every option of a Siamese or SimCLR run; `run.json` records them all."""

    method: str  # "siamese" or "simclr"
    data: str  # metadata CSV (siamese), or an image folder / metadata CSV (simclr)
    img_directory: str | None = None
    output_dir: str = "."
    siamese_type: str = "b"
    backbone: str = "resnet18"
    weights: str = "none"
    embedding_dim: int = 128
    margin: float = 1.0
    positive_ratio: float = 0.5
    projection_dim: int = 128
    temperature: float = 0.1
    classes_per_batch: int | None = None
    examples_per_class: int | None = None
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    image_size: int = 224
    seed: int = 42
    strategy: str = "default"
    resume: bool = False
    tensorboard: str | None = None
    background: str = "white"

    def check(self) -> None:
        get_backbone(self.backbone)
        parse_background(self.background)
        check_tensorboard(self.tensorboard)
        if self.strategy not in STRATEGIES:
            raise OptionError(f"--strategy: expected one of {', '.join(STRATEGIES)}. Received: {self.strategy!r}.")
        check_strategy_options(self.strategy, resume=self.resume)
        if self.siamese_type not in SIAMESE_TYPES:
            raise OptionError(f"--type: expected one of {', '.join(SIAMESE_TYPES)}. Received: {self.siamese_type!r}.")
        check_range("--temperature", self.temperature, low=0, low_open=True)
        check_range("--margin", self.margin, low=0, low_open=True)
        if (self.classes_per_batch is None) != (self.examples_per_class is None):
            raise OptionError("--classes-per-batch and --examples-per-class go together.")
        for option in ("epochs", "batch_size", "embedding_dim", "projection_dim", "image_size"):
            check_range("--" + option.replace("_", "-"), getattr(self, option), low=1)

    @property
    def batch(self) -> int:
        """Images per batch: a balanced batch's classes x examples, else --batch-size."""
        return self.classes_per_batch * self.examples_per_class if self.classes_per_batch else self.batch_size

    @property
    def metric(self) -> str:
        """Distance the embedding is trained for, and evaluated with."""
        return "euclidean" if self.method == "siamese" and self.siamese_type in ("b", "c") else "cosine"


def _load_images(options: SimilarityOptions, output_dir: Path) -> pd.DataFrame:
    """Readable images with `class` (empty when unknown), `split` and `path`, from a metadata CSV or a folder.

    A CSV's image files are found by `read_metadata`'s rule (`formats.metadata`):
    --img-directory, else the CSV's `root` column, else the CSV's folder.
    """
    source = Path(options.data)
    if source.is_dir():
        paths = find_images(source)
        images = [path.relative_to(source).as_posix() for path in paths]
        nested = [Path(image).parts[0] if len(Path(image).parts) > 1 else "" for image in images]
        frame = pd.DataFrame({"image": images, "class": nested, "split": "train", "path": paths})
    else:
        frame = read_metadata(source, img_directory=options.img_directory)
    if frame.empty:
        raise DataError(f"{source}: no images found.")
    return _readable(frame, source, output_dir)


def training_images(options: SimilarityOptions, output_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every readable image, the training split's); Siamese training needs every image's class."""
    frame = _load_images(options, output_dir)
    if options.method == "siamese" and (frame["class"] == "").any():
        raise DataError(f"{options.data}: every image needs a class for Siamese training.")
    return frame, frame[frame["split"] == "train"].reset_index(drop=True)


def _readable(frame: pd.DataFrame, source: Path, output_dir: Path) -> pd.DataFrame:
    """The rows whose image decodes; the others listed in `output_dir`, but only once some image is readable.

    A run that can read nothing fails before writing anything.
    """
    usable, skipped = check_images(list(frame["path"]))
    require_readable(sum(usable), skipped, str(source), fix=READABLE_FIX)
    report_skipped(skipped, output_dir, len(frame))
    return frame[np.array(usable)].reset_index(drop=True)


def require_two_classes(classes: np.ndarray, source: str | Path, *, images: str, purpose: str) -> None:
    """Refuse images all of one class where `purpose` compares classes.

    With one class every neighbour is a match: recall@1 and mAP@R are 1.0
    whatever the model, and a Siamese network has no negative pair.
    """
    found = np.unique(classes)
    if len(found) == 1:
        raise DataError(
            f"{source}: every {images} is of class '{found[0]}'; {purpose} needs at least two classes. "
            "Add images of another class."
        )


def retrieval_gallery(frame: pd.DataFrame, options: SimilarityOptions):
    """The labelled held-out images for the per-epoch retrieval evaluation, or None; they must hold two classes."""
    held_out = frame[(frame["split"] != "train") & (frame["class"] != "")]
    if held_out.empty:
        return None
    require_two_classes(held_out["class"].to_numpy(), options.data, images="held-out image",
                        purpose="the retrieval evaluation of every epoch")
    if held_out["class"].value_counts().max() < 2:
        return None
    dataset = image_dataset(
        list(held_out["path"]),
        image_size=options.image_size,
        preprocess=get_backbone(options.backbone).preprocess,
        batch_size=64,
        background=parse_background(options.background),
    )
    return dataset, held_out["class"].to_numpy()


def siamese_data(train: pd.DataFrame, options: SimilarityOptions, epochs: int, rng, strategy):
    classes = train["class"].to_numpy()
    require_two_classes(classes, options.data, images="training image", purpose="Siamese training (a negative pair is two classes)")
    require_pairs(classes, options.data)
    names, class_ids = np.unique(classes, return_inverse=True)
    first, second, same = [], [], []
    for _ in range(epochs):
        batches = None
        if options.classes_per_batch:
            batches = balanced_batches(classes, classes_per_batch=options.classes_per_batch,
                                       examples_per_class=options.examples_per_class, rng=rng)
        a, b, s = sample_pairs(classes, n_pairs=len(classes), positive_ratio=options.positive_ratio, rng=rng, batches=batches)
        first.append(a[: len(classes)])
        second.append(b[: len(classes)])
        same.append(s[: len(classes)])
    first, second, same = np.concatenate(first), np.concatenate(second), np.concatenate(same)
    targets = {"distance": same}
    if options.siamese_type in ("c", "d"):
        targets.update(class_a=class_ids[first], class_b=class_ids[second])
    paths = list(train["path"])

    def rows_dataset(rows: np.ndarray, batch_size: int):
        return pair_dataset(paths, first[rows], second[rows], {name: target[rows] for name, target in targets.items()},
                            image_size=options.image_size, preprocess=get_backbone(options.backbone).preprocess,
                            batch_size=batch_size, background=parse_background(options.background))

    dataset = distributed_input(strategy, rows_dataset, len(first), batch_size=options.batch)
    return dataset, max(1, len(first) // (epochs * options.batch)), len(names)


def simclr_data(train: pd.DataFrame, options: SimilarityOptions, epochs: int, rng, strategy):
    classes = train["class"].to_numpy()
    order = []
    for _ in range(epochs):
        if options.classes_per_batch:
            batches = balanced_batches(classes, classes_per_batch=options.classes_per_batch,
                                       examples_per_class=options.examples_per_class, rng=rng)
            order.append(np.concatenate(batches))
        else:
            order.append(rng.permutation(len(train)))
    steps = len(order[0]) // options.batch
    if steps < 1:
        raise DataError(f"{options.data}: {len(order[0])} training images, fewer than one batch of {options.batch}.")
    paths, order = list(train["path"]), np.concatenate(order)

    def rows_dataset(rows: np.ndarray, batch_size: int):
        return views_dataset(paths, order[rows], image_size=options.image_size,
                             preprocess=get_backbone(options.backbone).preprocess, batch_size=batch_size, view=simclr_view,
                             background=parse_background(options.background))

    return distributed_input(strategy, rows_dataset, len(order), batch_size=options.batch), steps, 0


def build_training_model(options: SimilarityOptions, n_classes: int) -> tuple[keras.Model, keras.Model]:
    """(training model, tower), compiled."""
    normalize = options.method == "siamese" and options.siamese_type == "d"
    tower = EmbeddingTower(options.backbone, weights=options.weights, image_size=options.image_size,
                           embedding_dim=options.embedding_dim, normalize=normalize)
    optimizer = keras.optimizers.Adam(options.learning_rate)
    if options.method == "simclr":
        model = SimCLR(tower, projection_dim=options.projection_dim, temperature=options.temperature)
        model.compile(optimizer=optimizer)
        return model, tower
    model = SiameseNetwork(tower, siamese_type=options.siamese_type, classes=n_classes)
    losses = {"distance": ContrastiveLoss(options.margin)}
    if options.siamese_type in ("c", "d"):
        losses.update(class_a=keras.losses.SparseCategoricalCrossentropy(), class_b=keras.losses.SparseCategoricalCrossentropy())
    model.compile(optimizer=optimizer, loss=losses)
    return model, tower


def tower_of(model: keras.Model) -> keras.Model:
    """The embedding tower inside a Siamese or SimCLR training model."""
    return model.encoder if isinstance(model, SimCLR) else model.get_layer("embedding_model")


def train_embedding(options: SimilarityOptions, *, verbose: int = 1) -> dict:
    """Run a whole Siamese or SimCLR training; return the summary also written to `run.json`.

    As for the classifier (`training.train_classifier`), the strategy comes
    first, and on a cluster only the chief writes into --output-dir.
    """
    options.check()
    started = time.time()
    strategy = distribution_strategy(options.strategy)
    # --output-dir is made with its first output (run.json before fit), not before.
    with worker_output_dir(Path(options.output_dir), strategy) as output_dir:
        summary = _train(options, strategy, output_dir, started, verbose=verbose if is_chief(strategy) else 0)
    # "chief": whether this process wrote the model (on a cluster, the other workers' outputs were temporary).
    return {**summary, "model": str(Path(options.output_dir) / EMBEDDING_FILE), "chief": is_chief(strategy)}


def _train(options: SimilarityOptions, strategy, output_dir: Path, started: float, *, verbose: int) -> dict:
    recorded = dataclasses.asdict(options)
    state = check_resumable(recorded, output_dir) if options.resume else None
    frame, train = training_images(options, output_dir)
    initial_epoch = state["epoch"] if state else 0
    remaining = max(options.epochs - initial_epoch, 1)
    rng = np.random.default_rng(options.seed + initial_epoch)
    keras.utils.set_random_seed(options.seed + initial_epoch)
    make_data = siamese_data if options.method == "siamese" else simclr_data
    dataset, steps, n_classes = make_data(train, options, remaining, rng, strategy)
    gallery = retrieval_gallery(frame, options)
    logger.info("Training on %d images%s", len(train), f", evaluating retrieval on {len(gallery[1])}" if gallery else " (no labelled held-out split: no retrieval evaluation)")

    with strategy.scope():
        if state is not None:
            model = keras.models.load_model(output_dir / state["checkpoint"])
            tower = tower_of(model)
            logger.info("Resuming after epoch %d", state["epoch"])
        else:
            model, tower = build_training_model(options, n_classes)
    monitor, mode = ("val_recall@1", "max") if gallery else ("loss", "min")

    def save_tower(_model, _epoch, _score, path):
        with atomic_path(path) as temporary:
            tower.save(temporary)

    callbacks = [RetrievalEvaluation(tower, *gallery, metric=options.metric)] if gallery else []
    checkpoints = TrainingCheckpoints(output_dir, save_best=save_tower, best_name=EMBEDDING_FILE, monitor=monitor,
                                      mode=mode, state=state)
    callbacks += [checkpoints, *tensorboard_callbacks(options.tensorboard, strategy, output_dir)]
    begin_run(output_dir, recorded, state, n_train=len(train))
    if initial_epoch < options.epochs:
        with fitting(model, strategy):
            model.fit(dataset, epochs=options.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps, shuffle=False,
                      callbacks=callbacks, verbose=verbose)
    history = pd.read_csv(output_dir / HISTORY_FILE)
    plot_training_curves(history, output_dir / "curves.png", score=monitor if gallery else None)
    summary = {
        "status": "finished",
        "best_epoch": checkpoints.best_epoch,
        f"best_{monitor}": round(checkpoints.best_score, 6),
        "epochs": int(history["epoch"].max()) + 1,
        "n_train": len(train),
        "wall_time_s": round(time.time() - started, 2),
        "model": str(output_dir / EMBEDDING_FILE),
    }
    if gallery:
        best = history.loc[history[monitor].idxmax()]
        summary.update({name: round(float(best[name]), 6) for name in history.columns if name.startswith("val_")})
    write_run_record(output_dir, recorded, **summary)
    return summary


def trained_metric(model_path: str | Path) -> str:
    """The distance a tower was trained for, from the run.json beside it; cosine when there is none."""
    try:
        recorded = json.loads((Path(model_path).parent / "run.json").read_text())["options"]
        return SimilarityOptions(**recorded).metric
    except (OSError, ValueError, KeyError, TypeError):
        return "cosine"


def assess(model_path: str | Path, metadata_csv: str | Path, *, img_directory: str | Path | None = None,
           split: str = "test", output_dir: str | Path = ".", metric: str | None = None, n_queries: int = 8,
           seed: int = 0, linear_probe: bool = False, search_index: str | Path | None = None) -> dict:
    """Retrieval and clustering scores of an embedding model on one split, plus `similarity_heatmap.png` and `query_grid.png`.

    The images are found as for training (`read_metadata`: `img_directory`,
    else the CSV's `root` column, else its folder). Everything is written in
    `output_dir` (made if missing): the two pictures, and `skipped_images.txt`
    only when some image could not be read. A split with no readable image
    fails before anything is written. `metric` defaults to the one the model
    was trained for (`trained_metric`). `linear_probe` adds the standard
    linear evaluation beside kNN (`linear_evaluation`); `search_index` the
    scores of the split's images as queries of that index (`search_scores`).
    """
    from image_toolkit.data_tools.maps.retrieval_plots import plot_query_grid, plot_similarity_heatmap
    from image_toolkit.data_tools.search.neighbors import exact_neighbors
    from image_toolkit.data_tools.search.retrieval import clustering_scores, retrieval_scores
    from image_toolkit.models.extraction import compute_features, keras_extractor

    tower, info = load_embedding_model(model_path)
    index = _comparable_index(search_index, tower, info, model_path) if search_index is not None else None
    metric = metric or trained_metric(model_path)
    frame = read_metadata(metadata_csv, img_directory=img_directory)
    frame = frame[frame["split"] == split]
    if frame.empty:
        raise DataError(f"{metadata_csv}: no rows with split '{split}'; choose --split among the file's splits.")
    output_dir = Path(output_dir)
    frame = _readable(frame, Path(metadata_csv), output_dir)
    paths, classes = list(frame["path"]), frame["class"].to_numpy()
    require_two_classes(classes, metadata_csv, images=f"image of split '{split}'", purpose="scoring retrieval")
    extractor = keras_extractor(tower, get_backbone(info["backbone"]).preprocess, info["image_size"],
                                {"background": info["background"]})
    embeddings = compute_features(extractor, paths, verbose=0)
    scores = retrieval_scores(embeddings, classes, metric=metric)
    scores.update(clustering_scores(embeddings, classes, metric=metric, seed=seed))
    if index is not None:
        scores.update(search_scores(index, embeddings, list(frame["image"]), classes,
                                    read_metadata(metadata_csv, img_directory=img_directory)))
    plot_similarity_heatmap(embeddings, classes, output_dir / "similarity_heatmap.png", seed=seed)
    _, neighbors = exact_neighbors(embeddings, k=min(5, len(paths) - 1), metric=metric)
    queries = np.random.default_rng(seed).choice(len(paths), size=min(n_queries, len(paths)), replace=False)
    plot_query_grid(paths, classes, neighbors, queries, output_dir / "query_grid.png", background=info["background"])
    if linear_probe:
        scores.update(linear_evaluation(embeddings, classes, seed=seed))
    return {"split": split, "images": len(paths), "metric": metric, **{k: round(v, 4) for k, v in scores.items()}}


def _comparable_index(search_index: str | Path, tower: keras.Model, info: dict, model_path: str | Path):
    """The index at `search_index`, refused in one line unless it holds features of this model's embedding."""
    from image_toolkit.data_tools.formats.features import MODEL_FILE_WEIGHTS
    from image_toolkit.data_tools.search.backends import load_index

    index = load_index(search_index)
    # What get-transfer-layer --model MODEL records for these features (extraction.feature_extractor).
    made = {"model": str(Path(model_path).resolve()), "layer": tower.layers[-1].name,
            "image_size": info["image_size"], "weights": MODEL_FILE_WEIGHTS}
    index.check_comparable(int(tower.output_shape[-1]), made, f"--search {search_index}: {model_path}'s embeddings")
    return index


def search_scores(index, embeddings: np.ndarray, images: list[str], classes: np.ndarray, labelled: pd.DataFrame) -> dict:
    """recall@1/5/10, mAP@R and kNN accuracy of the index's answers (`index_...`) and of an exact search of its rows (`exact_...`).

    The split's images query the index; their answers' classes come from
    the metadata CSV (`labelled`, every split) by image name
    (`index_scores`). The exact search ranks the same indexed rows by the
    same metric, so the two sets differ only by what the index approximates;
    it reads all N x D indexed rows into memory.
    """
    from collections import Counter

    from image_toolkit.data_tools.search.neighbors import exact_neighbors
    from image_toolkit.data_tools.search.retrieval import RECALL_AT, index_scores

    labels = dict(zip(labelled["image"], labelled["class"]))
    largest_class = max(Counter(labels[path] for path in index.paths_ if path in labels).values(), default=0)
    # Enough answers for recall@10 and mAP@R's R, plus the query's own image, which may be indexed.
    k = min(index.size, max(*RECALL_AT, largest_class) + 1)
    queries = np.asarray(embeddings, dtype=np.float32)
    _, answers = index.search(queries, k=k)
    _, exact = exact_neighbors(index.vectors(), queries=queries, k=k, metric=index.metric)
    scores, counts = index_scores(images, classes, answers, index.paths_, labels)
    truth, _ = index_scores(images, classes, exact, index.paths_, labels)
    return {**{f"index_{name}": value for name, value in scores.items()},
            **{f"exact_{name}": value for name, value in truth.items()},
            **{f"index_{name}": value for name, value in counts.items()}}


def linear_evaluation(embeddings: np.ndarray, classes: np.ndarray, *, seed: int = 0, held_out: float = LINEAR_HELD_OUT) -> dict[str, float]:
    """Linear-evaluation scores of embeddings: the probe of `toolkit probe` fitted on part of them, scored on the rest.

    The split's images are divided by the toolkit's stratified split
    (`held_out` of them scored); kNN scores every image by its neighbours,
    the probe those it was not fitted on.
    """
    from image_toolkit.data_tools.formats.splits import stratified_split
    from image_toolkit.models.probe import f1_scores, fit_linear_probe

    names, codes = np.unique(classes, return_inverse=True)
    one_hot = np.eye(len(names))[codes]
    scored = stratified_split(classes, held_out, seed=seed)
    probe = fit_linear_probe(embeddings[~scored], one_hot[~scored], "multiclass", seed=seed)
    scores = f1_scores(one_hot[scored], probe.predict_proba(embeddings[scored]), "multiclass")
    return {"linear_accuracy": scores["micro_f1"], "linear_macro_f1": scores["macro_f1"]}
