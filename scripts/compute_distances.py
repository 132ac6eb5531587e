"""The original entry point, kept: the same command as `toolkit compute-distances`.

    python scripts/compute_distances.py FEATURES_PATH OUTPUT_DIR_PATH DISTANCE_METRIC N_NEIGHBORS [N_CORES]
"""

from image_toolkit.cli.neighbors import compute_distances

if __name__ == "__main__":
    compute_distances(prog_name="compute_distances.py")
