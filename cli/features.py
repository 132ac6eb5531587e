"""`toolkit merge-features`: join the shards of a split feature extraction into one file or folder."""

from __future__ import annotations

from pathlib import Path

import click

from image_toolkit.cli.common import FeaturePath, command, echo_json, json_option, quiet_option, start


@command("merge-features")
@click.argument("output_path", type=FeaturePath())
@click.argument("input_paths", nargs=-1, required=True, type=FeaturePath(exists=True))
@quiet_option
@json_option
def merge_features(output_path: Path, input_paths: tuple[Path, ...], quiet: bool, as_json: bool) -> None:
    """Merge feature files (shards) into OUTPUT_PATH, in the order given.

    The shards must come from one extraction run (same model, layer, image
    size and weights). A path found in several shards is kept once, from
    the first. The output format follows OUTPUT_PATH's suffix: .npz, .h5,
    .pkl, or .feat for a feature folder (for large collections: shards are
    streamed block by block, never held in memory whole).

    \b
    Example, after a job array ran with --num-shards 4 --shard-index 0..3:
      toolkit merge-features features.npz features_shard*.npz
      toolkit merge-features features.feat part*.feat
    """
    start(quiet)
    from image_toolkit.data_tools.atomic import refuse_inputs
    from image_toolkit.data_tools.formats.features import feature_format
    from image_toolkit.data_tools.formats.features import merge_features as merge

    feature_format(output_path)
    refuse_inputs(output_path, input_paths, option="OUTPUT_PATH")
    summary = merge(list(input_paths), output_path, show=False if quiet or as_json else None)
    if as_json:
        echo_json({key: summary[key] for key in ("output", "inputs", "images", "features")})
    elif not quiet:
        click.echo(f"{summary['images']:,} images x {summary['features']:,} features from {summary['inputs']} files: {output_path}")
