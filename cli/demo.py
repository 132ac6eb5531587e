"""`toolkit demo-data`: the demo data set, from scikit-learn's handwritten digits (no download)."""

from __future__ import annotations

import click

from image_toolkit.cli.common import OUTPUT_DIR, command, echo_json, json_option, quiet_option, start

LAYOUTS = ("labels", "folders")
# Per layout: (images, pixels) when --n-images / --image-size are not given.
DEFAULTS = {"labels": (300, 64), "folders": (1797, 32)}
N_DIGITS = 1797  # the scans scikit-learn ships


@command("demo-data")
@click.argument("output_dir", type=OUTPUT_DIR)
@click.option("--layout", type=click.Choice(LAYOUTS), default="labels", show_default=True,
              help="labels: label.txt + images/ (multi-label, for train and predict); "
                   "folders: class sub-folders zero/ one/ ... nine/ (for make-metadata and the similarity commands).")
@click.option("--n-images", type=click.IntRange(1, N_DIGITS), default=None,
              help=f"Images to write (default: 300 for labels, all {N_DIGITS} for folders).")
@click.option("--image-size", type=click.IntRange(min=8), default=None,
              help="Side of the square images, in pixels (default: 64 for labels, 32 for folders).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the choice of digits (and of the blank label cells).")
@quiet_option
@json_option
def demo_data(output_dir: str, layout: str, n_images: int | None, image_size: int | None, seed: int,
              quiet: bool, as_json: bool) -> None:
    """Write a small real image data set to OUTPUT_DIR: scikit-learn's digits, upscaled to PNG.

    With --layout labels (the demo shipped with the toolkit), OUTPUT_DIR gets
    label.txt (an 'image' column and four yes/no labels: even, prime,
    five_or_more, closed_loop; 5 % of the cells blank) and images/. It is
    refused if OUTPUT_DIR already holds a label.txt or an images/ folder.
    With --layout folders, OUTPUT_DIR gets one sub-folder per digit; it must
    be new or empty, so the digits never mix into other classes. A failed
    run leaves nothing behind.

    \b
    Example:
      toolkit demo-data demo/ && cd demo && toolkit train --backbone small_cnn --weights none --image-size 32
      toolkit demo-data digits/ --layout folders && toolkit make-metadata digits/ metadata.csv
    """
    start(quiet)
    n_images, image_size = n_images or DEFAULTS[layout][0], image_size or DEFAULTS[layout][1]
    if layout == "folders":
        from image_toolkit.data_tools.make_demo_data import write_digit_folders

        write_digit_folders(output_dir, n_images=n_images, image_size=image_size, seed=seed)
        what = "class folders"
    else:
        from image_toolkit.data_tools.make_demo_data import write_demo_dataset

        write_demo_dataset(output_dir, n_images=n_images, image_size=image_size, seed=seed)
        what = "label.txt and images/"
    if as_json:
        echo_json({"output_dir": output_dir, "layout": layout, "images": n_images, "image_size": image_size})
    elif not quiet:
        click.echo(f"Wrote {n_images} digit images ({image_size} px) as {what} in {output_dir}")

