"""`toolkit inspect`: counts, sizes, unreadable files, duplicates and outliers of an image set."""

from __future__ import annotations

import click

from image_toolkit.cli.common import OUTPUT_DIR, command, echo_json, json_option, quiet_option, start

# data_tools.inspect.DUPLICATE_DISTANCE, the default of --duplicate-distance here and in filter-images, kept here
# so that a command's --help imports no numpy or pandas (tests/test_inspect.py checks they agree).
DUPLICATE_DISTANCE = 0.01


@command("inspect")
@click.argument("image_dir_or_csv", type=click.Path(exists=True))
@click.option("--data-csv", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Label CSV of the images in IMAGE_DIR (classes or labels); default: class sub-folders, if any.")
@click.option("--features", default=None, type=click.Path(exists=True),
              help="Feature file of these images (get-transfer-layer), matched by image name; default: pixel features.")
@click.option("--duplicate-distance", type=click.FloatRange(0, 2, max_open=True), default=DUPLICATE_DISTANCE, show_default=True,
              help="Cosine distance under which two images are near-duplicates.")
@click.option("--k", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Outlier score: mean distance to this many nearest images (of the same class when known).")
@click.option("--outliers", type=click.IntRange(min=0), default=16, show_default=True, help="How many top outliers to list and plot.")
@click.option("--output-dir", default="inspect", show_default=True, type=OUTPUT_DIR)
@quiet_option
@json_option
def inspect(image_dir_or_csv: str, data_csv: str | None, features: str | None, duplicate_distance: float, k: int,
            outliers: int, output_dir: str, quiet: bool, as_json: bool) -> None:
    """Look at an image set before training: classes, sizes, modes, unreadable files, duplicates, outliers.

    IMAGE_DIR_OR_CSV is a folder of images (classes from --data-csv, else from
    class sub-folders) or a metadata CSV (make-metadata). Writes inspect.json,
    duplicates.csv, outliers.csv and plots into --output-dir.

    \b
    Example (the demo data):
      toolkit inspect images --data-csv label.txt --output-dir inspect
    """
    start(quiet)
    from image_toolkit.data_tools.inspect import inspect_images

    report = inspect_images(image_dir_or_csv, output_dir, data_csv=data_csv, features=features,
                            duplicate_distance=duplicate_distance, k=k, outliers=outliers, show=False if quiet else None)
    if as_json:
        echo_json(report)
    elif not quiet:
        click.echo(summary(report, output_dir))


def summary(report: dict, output_dir: str) -> str:
    """A few aligned lines: a count, then what it counts."""
    def shown(counts: dict) -> str:
        return ", ".join(f"{name} {n}" for name, n in counts.items())

    size = report["width"], report["height"]
    lines = [
        f"{report['images']:8d}  images ({report['source']}); {report['readable']} readable",
        f"{len(report['unreadable']):8d}  unreadable" + (f" (first: {report['unreadable'][0]['image']}: "
                                                          f"{report['unreadable'][0]['reason']})" if report["unreadable"] else ""),
    ]
    for kind in ("classes", "labels"):
        if report.get(kind):
            lines.append(f"{len(report[kind]):8d}  {kind}: {shown(report[kind])}")
    lines += [
        f"{'':8}  sizes {size[0]['min']:.0f}-{size[0]['max']:.0f} x {size[1]['min']:.0f}-{size[1]['max']:.0f} px; "
        f"modes {shown(report['modes'])}; formats {shown(report['formats'])}",
        f"{report['exact_duplicate_groups']:8d}  groups of exact copies (same bytes)",
        f"{report['duplicate_groups']:8d}  duplicate groups, exact or near ({report['images_in_duplicate_groups']} images; "
        f"cosine distance <= {report['duplicate_distance']} on {report['features']})",
    ]
    if report["outliers"]:
        lines.append(f"{'':8}  top outliers: " + ", ".join(f"{row['image']} {row['score']:.3f}" for row in report["outliers"][:3]))
    lines.append(f"Wrote inspect.json, duplicates.csv, outliers.csv and {', '.join(report['plots'])} to {output_dir}")
    return "\n".join(lines)
