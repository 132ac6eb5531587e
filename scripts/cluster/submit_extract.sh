#!/bin/bash
# Submit a sharded feature extraction and its merge, which waits for every shard to succeed.
#
#   SHARDS=8 IMAGES=/data/photos OUT=/scratch/features scripts/cluster/submit_extract.sh         # SLURM
#   SHARDS=8 IMAGES=/data/photos OUT=/scratch/features scripts/cluster/submit_extract.sh sge     # SGE / UGE
#
# The jobs see this shell's environment (IMAGES, OUT, MODEL, EXTRACT_ARGS, TOOLKIT, FEATURES: see
# extract_array.sbatch). Prints the two job ids.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
scheduler=${1:-slurm}
count=${SHARDS:-}
if ! [[ $count =~ ^[1-9][0-9]*$ ]]; then
    echo "Error: submit_extract.sh: SHARDS='${count}' is not a number of shards; e.g. SHARDS=8 $0 $scheduler" >&2
    exit 2
fi
export SHARDS
case $scheduler in
    slurm)
        array=$(sbatch --parsable --export=ALL --array="0-$(( count - 1 ))" "$here/extract_array.sbatch")
        array=${array%%;*}
        merge=$(sbatch --parsable --export=ALL --dependency="afterok:$array" "$here/merge_shards.sh")
        ;;
    sge)
        array=$(qsub -terse -V -t "1-$count" "$here/extract_array.sge")
        array=${array%%.*}
        merge=$(qsub -terse -V -hold_jid "$array" "$here/merge_shards.sh")
        ;;
    *)
        echo "Error: submit_extract.sh: unknown scheduler '$scheduler'; use slurm or sge." >&2
        exit 2
        ;;
esac
echo "extraction array job $array, merge job $merge"
