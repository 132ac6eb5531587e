#!/bin/bash
# Join the shards of a job array (extract_array.sbatch or .sge) into one feature file, once every task succeeded.
#
#   sbatch --dependency=afterok:<array job id> --export=ALL,SHARDS=8,OUT=/scratch/features merge_shards.sh   (SLURM)
#   qsub -hold_jid <array job id> -v SHARDS=8,OUT=/scratch/features merge_shards.sh                         (SGE)
#
# Environment: SHARDS (required: the number of shards), OUT [features], FEATURES (the merged file)
# [$OUT/features.feat], TOOLKIT [toolkit]. A missing shard is one error line naming it, and no output.
#SBATCH --job-name=toolkit-merge
#SBATCH --output=toolkit-merge-%j.out
#$ -N toolkit-merge
#$ -cwd
#$ -V
#$ -j y
set -euo pipefail

count=${SHARDS:-}
if ! [[ $count =~ ^[1-9][0-9]*$ ]]; then
    echo "Error: merge_shards.sh: SHARDS='${count}' is not a number of shards; set SHARDS to the array's task count." >&2
    exit 2
fi
out=${OUT:-features}
shards=()
for (( i = 0; i < count; i++ )); do
    shards+=("$out/shard-$i.npz")
done
read -r -a toolkit <<< "${TOOLKIT:-toolkit}"
exec "${toolkit[@]}" merge-features "${FEATURES:-$out/features.feat}" "${shards[@]}"
