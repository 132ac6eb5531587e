"""Keyword query: rank images by their scores for the classes a word names.

A class matches a keyword when the keyword's words appear, in order, among
the words of the class name ("shark" matches "great white shark" and "tiger
shark"; a final plural "s" is ignored). Class names come from how the score
features were made: the 1000 ImageNet classes (shipped with the toolkit in
`imagenet_class_index.json`, the file Keras' `decode_predictions` uses) for
InceptionV3 / ResNet50 scores, or the label names stored in a toolkit model
file for its outputs.

With word vectors (word2vec text or binary format, read with gensim, the
`words` extra) the keyword's nearest words among the words of the class
names also count: each of the `topn` nearest, at cosine similarity at least
`min_similarity`, adds its classes with the similarity as weight (a direct
match weighs 1). An image's score is the weighted sum of its scores for the
matched classes.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError, missing_extra
from image_toolkit.data_tools.formats.features import FeatureSet
from image_toolkit.data_tools.search.ranking import top_k

IMAGENET_CLASS_INDEX = Path(__file__).with_name("imagenet_class_index.json")
IMAGENET_MODELS = ("inceptionv3", "resnet50")
SCORES_FIX = "give --scores with class scores of the images (toolkit get-inception-output IMAGES scores.npz)"


@dataclass(frozen=True)
class ClassMatch:
    """A class a keyword selects: its column in the scores, its name, its weight and the word that matched."""

    index: int
    name: str
    weight: float
    word: str


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in the order of the networks' outputs, with spaces for underscores."""
    content = json.loads(IMAGENET_CLASS_INDEX.read_text(encoding="utf-8"))
    return tuple(content[str(i)][1].replace("_", " ") for i in range(len(content)))


def model_file_label_names(path: str | os.PathLike) -> list[str]:
    """The label names recorded in a toolkit model file (best_model.h5)."""
    from image_toolkit.data_tools.formats.model_file import read_h5_metadata

    try:
        metadata = read_h5_metadata(path)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the label names of this model file ({error}).") from None
    names = (metadata or {}).get("label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: this model file records no label names; it was not saved by toolkit train.")
    return [str(name) for name in names]


def class_names(metadata: dict, dim: int, where: str) -> list[str]:
    """The class name of every column of score features, from their metadata.

    `metadata["class_names"]` (stored by `toolkit index build`) wins; then
    ImageNet names for the scores of a named network, then the label names
    of a toolkit model file. Anything else has no vocabulary: a DataError.
    """
    names = metadata.get("class_names")
    if names is None:
        model, output = metadata.get("model"), metadata.get("output")
        if output != "scores":
            raise DataError(
                f"{where} holds {output or 'unlabelled'} features of {model or 'an unknown model'}, not class scores, "
                f"so a keyword has no class names to match; {SCORES_FIX}."
            )
        if model in IMAGENET_MODELS:
            names = list(imagenet_class_names())
        elif model and Path(model).is_file():
            names = model_file_label_names(model)
        else:
            raise DataError(f"{where}: the scores come from {model!r}, whose class names are unknown (no such model file); {SCORES_FIX}.")
    if len(names) != dim:
        raise DataError(f"{where}: {dim} scores per image but {len(names)} class names; {SCORES_FIX}.")
    return [str(name).replace("_", " ") for name in names]


def with_class_names(metadata: dict, dim: int) -> dict:
    """The metadata with the label names of its toolkit model file, when it has one, so searches need no model file."""
    model = metadata.get("model")
    if metadata.get("output") != "scores" or "class_names" in metadata or model in IMAGENET_MODELS or not model:
        return metadata
    try:
        names = model_file_label_names(model) if Path(model).is_file() else None
    except DataError:
        names = None
    return {**metadata, "class_names": names} if names and len(names) == dim else metadata


def read_word_vectors(path: str | os.PathLike):
    """Word vectors in word2vec text or binary format, as gensim KeyedVectors."""
    try:
        from gensim.models import KeyedVectors
    except ImportError:
        raise missing_extra("--word-vectors", "gensim", "words", error=OptionError) from None
    path = Path(path)
    first_binary = path.suffix.lower() == ".bin"
    for binary in (first_binary, not first_binary):
        try:
            return KeyedVectors.load_word2vec_format(str(path), binary=binary)
        except (ValueError, UnicodeDecodeError, EOFError, IndexError) as error:
            last_error = error
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror or error}).") from None
    raise DataError(f"{path}: not a word2vec file in text or binary format ({str(last_error).splitlines()[0][:120]}).")


def _words(text: str) -> list[str]:
    return [word for word in re.split(r"[\s_\-]+", text.lower()) if word]


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _contains(words: list[str], phrase: list[str]) -> bool:
    stems, wanted = [_stem(w) for w in words], [_stem(w) for w in phrase]
    return any(stems[i : i + len(wanted)] == wanted for i in range(len(stems) - len(wanted) + 1))


def closest_names(keyword: str, names: list[str], n: int = 5) -> list[str]:
    """The class names nearest in spelling to the keyword, for an error message."""
    keyword = " ".join(_words(keyword))
    ranked = sorted(
        names,
        key=lambda name: -max([difflib.SequenceMatcher(None, keyword, name.lower()).ratio()]
                              + [difflib.SequenceMatcher(None, keyword, word).ratio() for word in _words(name)]),
    )
    return list(dict.fromkeys(ranked))[:n]


def match_classes(
    keyword: str,
    names: list[str],
    *,
    word_vectors=None,
    topn: int = 5,
    min_similarity: float = 0.5,
    source: str = "the word vectors",
) -> list[ClassMatch]:
    """The classes a keyword selects, heaviest first; a DataError listing the closest names if none."""
    phrase = _words(keyword)
    if not phrase:
        raise OptionError(f"--text: give a keyword. Received: {keyword!r}")
    weights: dict[int, tuple[float, str]] = {}
    for index, name in enumerate(names):
        if _contains(_words(name), phrase):
            weights[index] = (1.0, " ".join(phrase))
    note = ""
    if word_vectors is not None:
        query = _keyword_vector(word_vectors, keyword)
        if query is None:
            note = f" '{keyword}' is not in {source}."
        else:
            similar = _similar_words(word_vectors, query, names, topn=topn, min_similarity=min_similarity)
            if not similar:
                note = f" No class word is within similarity {min_similarity} of '{keyword}' in {source}."
            for word, similarity in similar:
                for index, name in enumerate(names):
                    if (word in _words(name) or word == "_".join(_words(name))) and similarity > weights.get(index, (0,))[0]:
                        weights[index] = (similarity, word.replace("_", " "))
    if not weights:
        hint = "" if word_vectors is not None else " Give --word-vectors to match synonyms too."
        raise DataError(
            f"no class name matches '{keyword}'.{note} Closest class names: {', '.join(closest_names(keyword, names))}.{hint}"
        )
    matches = [ClassMatch(index, names[index], round(weight, 4), word) for index, (weight, word) in weights.items()]
    return sorted(matches, key=lambda match: (-match.weight, match.index))


def _keyword_vector(word_vectors, keyword: str) -> np.ndarray | None:
    """The keyword's unit vector: the phrase itself (words joined by '_'), else the mean of its words."""
    for candidate in (keyword.strip().replace(" ", "_"), "_".join(_words(keyword))):
        if candidate in word_vectors.key_to_index:
            return word_vectors.get_vector(candidate, norm=True)
    found = [word_vectors.get_vector(word, norm=True) for word in _words(keyword) if word in word_vectors.key_to_index]
    if not found:
        return None
    mean = np.mean(found, axis=0)
    return mean / (np.linalg.norm(mean) or 1)


def _similar_words(word_vectors, query: np.ndarray, names: list[str], *, topn: int, min_similarity: float) -> list[tuple[str, float]]:
    """The `topn` words of the class vocabulary (single words and whole names) nearest to the query vector."""
    vocabulary = set()
    for name in names:
        words = _words(name)
        vocabulary.update(words)
        if len(words) > 1:
            vocabulary.add("_".join(words))
    similarities = {}
    for word in vocabulary:
        for key in (word, word.capitalize()):
            if key in word_vectors.key_to_index:
                similarity = float(word_vectors.get_vector(key, norm=True) @ query)
                similarities[word] = max(similarity, similarities.get(word, -1.0))
    ranked = sorted(similarities.items(), key=lambda item: (-item[1], item[0]))
    return [(word, similarity) for word, similarity in ranked[:topn] if similarity >= min_similarity]


def rank_by_classes(scores: np.ndarray, matches: list[ClassMatch], *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest weighted sums of the matched classes' scores: (scores, row indices), best first, ties by row."""
    check_range("k", k, low=1)
    if k > len(scores):
        warnings.warn(f"k={k} is more than the {len(scores)} images with scores; returning all {len(scores)}.", stacklevel=2)
        k = len(scores)
    columns = np.array([match.index for match in matches])
    weights = np.array([match.weight for match in matches], dtype=np.float32)
    combined = scores[:, columns] @ weights
    order = top_k(combined, k)
    return combined[order].astype(np.float32), order


def scores_for_index(
    index, scores: FeatureSet | None, where: str, *, scores_name: str = "--scores"
) -> tuple[list[str], np.ndarray, dict, str]:
    """The paths, class scores and their metadata to rank: the scores file's rows of indexed images, or the index's own rows.

    `where` names the index and `scores_name` the scores file in messages.
    """
    if scores is None:
        return index.paths_, index.vectors(), index.features_metadata_, where
    indexed = set(index.paths_)
    keep = np.array([path in indexed for path in scores.paths], dtype=bool)
    if not keep.any():
        raise DataError(
            f"{scores_name}: none of its {len(scores.paths)} images is in the index {where}; "
            "extract scores of the indexed images (get-inception-output on the same image folder)."
        )
    missing = len(indexed) - int(keep.sum())
    if missing > 0:
        warnings.warn(f"{missing} of the {len(indexed)} indexed images have no scores in {scores_name} and are left out.", stacklevel=2)
    paths = [path for path, ok in zip(scores.paths, keep) if ok]
    return paths, scores.features[keep], scores.metadata, scores_name


def keyword_search(
    index,
    keyword: str,
    *,
    k: int = 10,
    scores: FeatureSet | None = None,
    word_vectors=None,
    word_vectors_name: str = "the word vectors",
    topn: int = 5,
    min_similarity: float = 0.5,
    where: str = "the index",
) -> tuple[list[ClassMatch], list[tuple[str, float]]]:
    """The classes a keyword selects and the k best images by their weighted class scores: [(path, score)]."""
    paths, values, metadata, source = scores_for_index(index, scores, where)
    names = class_names(metadata, values.shape[1], source)
    matches = match_classes(keyword, names, word_vectors=word_vectors, topn=topn,
                            min_similarity=min_similarity, source=word_vectors_name)
    best, rows = rank_by_classes(values, matches, k=k)
    return matches, [(paths[row], float(score)) for row, score in zip(rows, best)]
