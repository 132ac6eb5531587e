"""Transparent images composited onto one fixed background colour (`--background`).

The RGB hidden under fully transparent pixels is arbitrary: black in one
file, white in another, noise in a third. Dropping the alpha channel would
show the model those arbitrary colours, so every image with transparency
(RGBA, LA, PA, a palette or grey image with a transparent colour) is
composited onto the run's background before anything else, in training,
inference, extraction, thumbnails and the web page alike.

The blend is `rgb * a + background * (1 - a)` in float32 with `a = alpha / 255`,
rounded half to even: `models.pipeline` computes the very same formula in
TensorFlow, so both decoders give identical pixels.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from image_toolkit.data_tools.errors import OptionError

Background = tuple[int, int, int]

NAMED_BACKGROUNDS: dict[str, Background] = {"white": (255, 255, 255), "black": (0, 0, 0)}
DEFAULT_BACKGROUND = "white"
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def parse_background(text: str | None, *, option: str = "--background") -> Background:
    """The (r, g, b) of 'white', 'black' or 'R,G,B' (integers 0-255); None means the default, white.

    Files made before backgrounds were recorded hold no value: they are read
    as white.
    """
    if text is None:
        return NAMED_BACKGROUNDS[DEFAULT_BACKGROUND]
    value = str(text).strip().lower()
    if value in NAMED_BACKGROUNDS:
        return NAMED_BACKGROUNDS[value]
    parts = value.split(",")
    try:
        rgb = tuple(int(part) for part in parts)
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= channel <= 255 for channel in rgb):
        raise OptionError(
            f"{option}: expected white, black or R,G,B with three integers 0-255 (e.g. 128,128,128). "
            f"Received: {text!r}."
        )
    return rgb


def background_name(background: Background | str | None) -> str:
    """The canonical text of a background, as recorded in run.json and feature metadata ('white', 'black' or 'R,G,B')."""
    rgb = parse_background(background) if background is None or isinstance(background, str) else tuple(background)
    names = {value: name for name, value in NAMED_BACKGROUNDS.items()}
    return names.get(rgb, ",".join(map(str, rgb)))


def composite(rgba: np.ndarray, background: Background) -> np.ndarray:
    """Blend an H x W x 4 uint8 array onto `background`: H x W x 3 uint8."""
    alpha = rgba[..., 3:].astype(np.float32) / np.float32(255)
    blended = rgba[..., :3].astype(np.float32) * alpha + np.asarray(background, np.float32) * (np.float32(1) - alpha)
    return np.round(blended).astype(np.uint8)


def has_alpha(image: Image.Image) -> bool:
    """Whether a Pillow image has an alpha channel or a transparent colour."""
    return image.mode in ALPHA_MODES or "transparency" in image.info


def to_rgb(image: Image.Image, background: Background | str | None = None) -> Image.Image:
    """An RGB copy of `image`, its transparent parts composited onto `background` (default white).

    Pillow warns about palette images whose transparency is expressed in
    bytes when they are converted; they are converted through RGBA here, and
    the warning, which the user cannot act on, is silenced.
    """
    rgb = parse_background(background) if background is None or isinstance(background, str) else tuple(background)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
        if has_alpha(image):
            return Image.fromarray(composite(np.asarray(image.convert("RGBA")), rgb), "RGB")
        return image.convert("RGB")


def model_background(saved: dict, requested: str | None, model: object) -> str:
    """The background to feed a saved model: the one it recorded at training (or `requested`, which must agree).

    A model that records none (made before backgrounds were recorded, or an
    embedding model file, which has no toolkit metadata) takes `requested`,
    default white.
    """
    recorded = saved.get("background")
    if recorded is None:
        return background_name(requested)
    if requested is not None and background_name(requested) != background_name(recorded):
        raise OptionError(
            f"--background {requested}: {model} was trained with --background {recorded}; "
            "leave out --background to use it, or retrain."
        )
    return background_name(recorded)
