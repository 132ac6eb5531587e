import numpy as np
from PIL import Image

from image_toolkit.data_tools.formats.background import to_rgb
from image_toolkit.data_tools.formats.images import check_images, find_images
from image_toolkit.models.pipeline import decode_rgb, image_dataset
from image_toolkit.models.runtime import tf


def make_images(folder):
    """One file per mode and format the pipeline must accept, at odd sizes."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    files = {
        "rgb.jpg": Image.fromarray(pixels),
        "gray.png": Image.fromarray(pixels[..., 0], mode="L"),
        "alpha.png": Image.fromarray(np.dstack([pixels, pixels[..., :1]]), mode="RGBA"),
        "palette.bmp": Image.fromarray(pixels).convert("P"),
        "one_bit.bmp": Image.fromarray(pixels).convert("1"),
        "gray.bmp": Image.fromarray(pixels[..., 0], mode="L"),
        "rgb.bmp": Image.fromarray(pixels),
        "cmyk.jpg": Image.fromarray(pixels).convert("CMYK"),
        "wide16.png": Image.fromarray(pixels[..., 0].astype(np.uint16) * 200),
    }
    for name, image in files.items():
        image.save(folder / name)
    frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "camera.jpg", format="MPO", save_all=True, append_images=frames[1:])
    return sorted(folder / name for name in [*files, "anim.gif", "camera.jpg"])


def test_lossless_files_decode_to_the_colours_pillow_sees(tmp_path):
    # TensorFlow alone reads a palette BMP's indices as grey levels and refuses 1-bit BMPs.
    for path in make_images(tmp_path):
        if path.name == "wide16.png":
            continue  # Pillow clips 16-bit grey to 255 where TensorFlow scales it.
        with Image.open(path) as image:
            expected = np.asarray(to_rgb(image), dtype=np.int16)  # alpha.png: composited onto white
        decoded = decode_rgb(str(path)).numpy().astype(np.int16)
        tolerance = 40 if path.suffix == ".jpg" else 0  # JPEG decoders round differently.
        assert decoded.shape == expected.shape, path.name
        assert np.abs(decoded - expected).mean() <= tolerance / 10 and np.abs(decoded - expected).max() <= tolerance, path.name


def make_bad_files(folder):
    (folder / "text.jpg").write_text("this is not an image")
    png = folder / "truncated.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(png)
    png.write_bytes(png.read_bytes()[:60])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "picture.tiff")
    return [folder / "text.jpg", folder / "truncated.png", folder / "picture.tiff", folder / "missing.png"]


def test_every_mode_decodes_to_rgb_of_the_requested_size(tmp_path):
    paths = make_images(tmp_path)
    usable, skipped = check_images(paths)
    assert all(usable), skipped
    batches = list(image_dataset(paths, image_size=24, preprocess=lambda x: x, batch_size=4))
    images = np.concatenate([b.numpy() for b in batches])
    assert images.shape == (len(paths), 24, 24, 3)
    assert images.min() >= 0 and images.max() <= 255.5


def test_unreadable_files_are_reported_with_a_reason(tmp_path):
    bad = make_bad_files(tmp_path)
    usable, skipped = check_images(bad)
    assert usable == [False] * 4
    reasons = dict(skipped)
    assert "cannot decode" in reasons[str(bad[0])]
    assert "cannot decode" in reasons[str(bad[1])]
    assert "unsupported format TIFF" in reasons[str(bad[2])]
    assert reasons[str(bad[3])] == "file not found"


def test_labels_stay_aligned_with_their_images(tmp_path):
    paths = []
    for value in range(6):
        path = tmp_path / f"{value}.png"
        Image.fromarray(np.full((10, 10, 3), value * 40, np.uint8)).save(path)
        paths.append(path)
    labels = np.arange(6, dtype=np.float32)[:, None]
    dataset = image_dataset(paths, labels, image_size=10, preprocess=lambda x: x, batch_size=4, shuffle=True, seed=1)
    for images, batch_labels in dataset:
        np.testing.assert_allclose(images.numpy()[:, 0, 0, 0] / 40, batch_labels.numpy()[:, 0], atol=1e-3)


def test_find_images_is_recursive_and_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ["b/2.png", "1.JPG", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["1.JPG", "b/2.png"]


def test_the_caffe_preprocessing_gives_keras_bits():
    """ResNet50's and VGG16's preprocessing, rewritten for speed, is Keras' own to the last bit, on tensors and arrays."""
    import keras

    from image_toolkit.models.backbones import get_backbone

    images = np.random.default_rng(0).uniform(0, 255, (4, 9, 7, 3)).astype(np.float32)
    images[0, 0, 0] = [0, 255, 127.5]
    expected = keras.applications.resnet50.preprocess_input(images.copy())
    for name in ("resnet50", "vgg16"):
        preprocess = get_backbone(name).preprocess
        for given in (images, tf.constant(images)):
            np.testing.assert_array_equal(np.asarray(preprocess(given)), expected)
        assert np.asarray(preprocess(images)).dtype == np.float32
