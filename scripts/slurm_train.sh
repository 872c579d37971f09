#!/bin/bash
# volgan on a SLURM cluster: one torchrun per node, one process per GPU, rendezvous on the first node.
# Submit with `sbatch scripts/slurm_train.sh CONFIG DATA RUN_DIR`; adapt the #SBATCH lines to your site.
#SBATCH --job-name=volgan
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:?config file}
DATA=${2:?data folder}
RUN_DIR=${3:?run folder (on a file system every node sees)}

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=$((SLURM_CPUS_PER_TASK / SLURM_GPUS_PER_NODE))

# train.batch_size in CONFIG is the global batch: it must be divisible by nodes x GPUs per node.
# Re-submitting the same command resumes from the newest checkpoint when RUN_DIR already has one.
resume=()
if compgen -G "$RUN_DIR/checkpoints/step_*.pt" > /dev/null; then resume=(--resume "$RUN_DIR"); fi

srun torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node "$SLURM_GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$head_node:29500" \
    -m volgan -- train --config "$CONFIG" --data "$DATA" --run-dir "$RUN_DIR" "${resume[@]}"
