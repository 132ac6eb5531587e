#!/bin/bash
# Join the shards $OUT/shard-0.feat .. shard-(N-1).feat of a job array (extract_array.sbatch or .sge) into one
# feature file.
#
#   sbatch --dependency=afterok:<array job id> --export=ALL,SHARDS=8,OUT=/scratch/features merge_shards.sh   (SLURM)
#   qsub -hold_jid <array job id> -v SHARDS=8,OUT=/scratch/features merge_shards.sh                         (SGE)
#
# SLURM's afterok starts the merge only once every task succeeded. SGE's -hold_jid starts it when the array has
# ended, even if a task failed: what stops it then is merge-features itself, which refuses a missing shard and
# shards that are not one complete run (their num_shards / shard_index must be 0..N-1, each once), with one
# error line naming the file, and writes no output.
#
# Environment: SHARDS (required: the number of shards), OUT [features], FEATURES (the merged file)
# [$OUT/features.feat], TOOLKIT [toolkit].
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
    shards+=("$out/shard-$i.feat")
done
read -r -a toolkit <<< "${TOOLKIT:-toolkit}"
exec "${toolkit[@]}" merge-features "${FEATURES:-$out/features.feat}" "${shards[@]}"
