"""`toolkit search`: the images of an index nearest to a query image or feature rows, or best for a keyword.

Only `--image` needs TensorFlow (to embed the query with the index's model);
it is imported in that branch alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from image_toolkit.cli.common import (
    FeaturePath,
    command,
    echo_json,
    json_option,
    progress_to_stderr,
    quiet_option,
    runtime_options,
    start,
)
from image_toolkit.data_tools.names import EXTRACT_PRECISIONS


@command("search")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Query image (repeatable): embedded with the model the index was built from.")
@click.option("--features", type=FeaturePath(exists=True),
              help="Feature file (.npz, .h5, .pkl) or folder of query images, from the index's model and layer.")
@click.option("--text", help="Keyword: rank images by their scores for the classes it names.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Results per query; more than the index holds is clamped to its size, with a warning.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the results as CSV (query, rank, path, distance or score) instead of printing them.")
@click.option("--word-vectors", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="--text: word2vec file (text, or binary if named .bin); similar class words count too. Needs gensim.")
@click.option("--scores", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="--text: class scores of the indexed images (toolkit get-inception-output), when the index holds other features.")
@click.option("--min-similarity", type=click.FloatRange(-1, 1), default=0.5, show_default=True,
              help="--text with --word-vectors: least similarity for a class word to count.")
@click.option("--n-jobs", "n_threads", type=int, default=-1, show_default=True, help="Threads for faiss and BLAS (-1: all cores).")
@runtime_options(EXTRACT_PRECISIONS, recorded="the one that made the index's features (--image)")
@quiet_option
@json_option
def search(index_dir: Path, images: tuple[Path, ...], features: Path | None, text: str | None, k: int,
           output: Path | None, word_vectors: Path | None, scores: Path | None, min_similarity: float,
           n_threads: int, runtime: str | None, precision: str | None, quiet: bool, as_json: bool) -> None:
    """Find the K images of the index in INDEX_DIR nearest to a query, or best for a keyword.

    Give exactly one query: --image (reverse image search), --features
    (many queries at once) or --text (keyword search over class scores:
    ImageNet class names for get-inception-output features, the label names
    of a toolkit model for its outputs). Results list rank, path and the
    distance (cosine, euclidean) or score (inner_product, keyword).

    \b
    Example:
      toolkit search my_index/ --image query.jpg -k 5
      toolkit search my_index/ --image query.jpg --runtime openvino
      toolkit search my_index/ --features queries.npz --output results.csv
      toolkit search scores_index/ --text "shark" --json
      toolkit search my_index/ --text sofa --scores scores.npz --word-vectors vectors.txt
    """
    given = [name for name, value in (("--image", images), ("--features", features), ("--text", text)) if value]
    if len(given) != 1:
        raise click.UsageError(f"give exactly one of --image, --features or --text. Received: {', '.join(given) or 'none'}")
    if text is None and (word_vectors or scores):
        raise click.UsageError("--word-vectors and --scores apply to --text only.")
    if not images and (runtime or precision):
        raise click.UsageError("--runtime and --precision apply to --image only: they embed the query images.")
    start(quiet)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # Its loader logs every CPU feature it tries.
    from image_toolkit.data_tools.search.backends import load_index

    image_index = load_index(index_dir, n_threads=n_threads)
    value_name = "score" if image_index.metric == "inner_product" else "distance"
    if text is not None:
        value_name = "score"
        queries = [_keyword_query(image_index, index_dir, text, k, scores, word_vectors, min_similarity)]
    else:
        if images:
            names, blocks = [str(image) for image in images], [(0, _embed(image_index, index_dir, list(images), as_json, runtime, precision))]
        else:
            from image_toolkit.data_tools.formats.features import feature_blocks, open_features

            query_set = open_features(features)
            image_index.check_comparable(query_set.features.shape[1], query_set.metadata, features.name)
            names, blocks = query_set.paths, feature_blocks(query_set.features, where=features.name)
        queries = []
        for first, rows in blocks:  # Query features a block at a time: a file of many queries may stay on disk.
            values, indices = image_index.search(rows, k=k)
            queries += [
                {"query": name, "results": [
                    {"rank": rank, "path": image_index.paths_[i], value_name: round(float(v), 6)}
                    for rank, (i, v) in enumerate(((i, v) for i, v in zip(row_ids, row_values) if i >= 0), start=1)
                ]}
                for name, row_ids, row_values in zip(names[first : first + len(rows)], indices.tolist(), values.tolist())
            ]
    _show(queries, value_name, output, as_json, quiet)


def _embed(image_index, index_dir: Path, images: list[Path], as_json: bool, runtime: str | None, precision: str | None):
    """The query images' features, from the model recorded in the index."""
    from image_toolkit.data_tools.errors import DataError
    from image_toolkit.data_tools.formats.features import MODEL_FILE_WEIGHTS
    from image_toolkit.data_tools.formats.images import image_problem

    for image in images:
        problem = image_problem(image)
        if problem:
            raise DataError(f"{image}: {problem}; give a JPEG, PNG, BMP or GIF image.")
    metadata = image_index.features_metadata_
    if not metadata.get("model"):
        raise DataError("the index records no feature model, so a query image cannot be embedded; search with --features.")
    if metadata.get("weights") == MODEL_FILE_WEIGHTS and not Path(metadata["model"]).is_file():
        elsewhere = f" nor at {index_dir / metadata['model_relative']}" if metadata.get("model_relative") else ""
        raise DataError(
            f"{metadata['model']}: the model file the index {index_dir} was built with is not there{elsewhere}; "
            "put it back, or search with --features FILE (query features extracted with that model)."
        )
    from image_toolkit.models.extraction import compute_features, extractor_from_metadata

    with progress_to_stderr(as_json):
        extractor = extractor_from_metadata(image_index.features_metadata_, runtime=runtime, precision=precision,
                                            queries=True)
        return compute_features(extractor, images, batch_size=len(images), verbose=0)


def _keyword_query(image_index, index_dir: Path, text: str, k: int, scores: Path | None,
                   word_vectors: Path | None, min_similarity: float) -> dict:
    from image_toolkit.data_tools.formats.features import read_features
    from image_toolkit.data_tools.search.keywords import keyword_search, read_word_vectors

    logging.getLogger("gensim").setLevel(logging.WARNING)  # It logs every file it loads.
    vectors = read_word_vectors(word_vectors) if word_vectors else None
    matches, ranked = keyword_search(
        image_index, text, k=k, scores=read_features(scores) if scores else None, word_vectors=vectors,
        word_vectors_name=word_vectors.name if word_vectors else "the word vectors",
        min_similarity=min_similarity, where=str(index_dir),
    )
    return {
        "query": text,
        "classes": [{"name": m.name, "weight": m.weight, "word": m.word} for m in matches],
        "results": [{"rank": rank, "path": path, "score": round(score, 6)} for rank, (path, score) in enumerate(ranked, start=1)],
    }


def _show(queries: list[dict], value_name: str, output: Path | None, as_json: bool, quiet: bool) -> None:
    """Print the results (also with --quiet: they are what the command is for), or write them to --output."""
    if output is not None:
        from image_toolkit.data_tools.search.index import write_results

        rows = [(query["query"], r["rank"], r["path"], r[value_name]) for query in queries for r in query["results"]]
        write_results(output, [("query", "rank", "path", value_name), *rows])
        if as_json:
            echo_json({"output": str(output), "queries": len(queries), "rows": len(rows)})
        elif not quiet:
            click.echo(f"Wrote {len(rows):,} results of {len(queries):,} queries to {output}")
        return
    for query in queries:
        if as_json:
            echo_json(query)
            continue
        classes = query.get("classes")
        if classes is not None:
            shown = ", ".join(f"{c['name']} ({c['weight']:.2f}{'' if c['weight'] == 1 else ' via ' + repr(c['word'])})" for c in classes[:8])
            more = f" and {len(classes) - 8} more" if len(classes) > 8 else ""
            click.echo(f"{query['query']!r}: classes {shown}{more}")
        else:
            click.echo(query["query"])
        width = max((len(r["path"]) for r in query["results"]), default=4)
        click.echo(f"{'rank':>6}  {'path':<{width}}  {value_name}")
        for r in query["results"]:
            click.echo(f"{r['rank']:>6}  {r['path']:<{width}}  {r[value_name]:.4f}")
