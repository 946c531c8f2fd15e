#!/usr/bin/env bash
# Train with torchrun: one machine, or several machines each running this script with its own NODE_RANK.
#
# Usage:
#   launch/torchrun.sh [--dry-run] RECIPE [hydra overrides...]
#
# Examples:
#   launch/torchrun.sh sft deepspeed=zero2                        # this machine, every visible GPU
#   NPROC_PER_NODE=2 launch/torchrun.sh sft train.epochs=1       # CPU-only machine: 2 ranks on gloo
#   # two machines: run on each, same MASTER_ADDR / MASTER_PORT / output_dir, NODE_RANK 0 and 1
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node1 MASTER_PORT=29500 launch/torchrun.sh sft output_dir=/shared/runs/sft
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node1 MASTER_PORT=29500 launch/torchrun.sh sft output_dir=/shared/runs/sft
#
# Runs:
#   torchrun --nnodes NNODES --node_rank NODE_RANK --nproc_per_node NPROC_PER_NODE --master_addr ADDR \
#       --master_port PORT -m safe_rlhf.train --config-name RECIPE OVERRIDES [output_dir=runs/RECIPE-<timestamp>]
#
# Environment:
#   NNODES          machines taking part (default 1)
#   NODE_RANK       this machine's index, 0..NNODES-1 (default 0)
#   NPROC_PER_NODE  ranks on this machine (default: every GPU in CUDA_VISIBLE_DEVICES / nvidia-smi; 1 without GPUs)
#   MASTER_ADDR     address of node 0 (default 127.0.0.1; required when NNODES > 1)
#   MASTER_PORT     rendezvous port (default: a free port; required when NNODES > 1, all machines must agree)
#   DRY_RUN=1       print the commands (lines starting with "+ ") and run nothing; same as --dry-run
#   OMP_NUM_THREADS is set to 1 on a CPU-only machine unless set; WANDB_MODE=offline when WANDB_API_KEY is unset.
#   PET_SIGNALS_TO_HANDLE adds SIGUSR1 to the signals torchrun forwards to its ranks, and PET_SHUTDOWN_TIMEOUT /
#   TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default 300) give the ranks that long to save before torchrun kills them.
#
# With NNODES > 1 an output_dir= override is required (a timestamp would differ between machines) and should be on
# a shared filesystem. Node 0 writes output_dir/launch_command.sh and output_dir/launch.log, node k writes
# launch_command.node-k.sh and launch.node-k.log. The exit status is torchrun's: 0 on success, non-zero otherwise
# (torchrun reports a rank's status 75, "checkpoint saved", as a failure of its own; see docs/cluster.md).
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_leading_options "$0" "$@"
set -- "${REST_ARGS[@]+"${REST_ARGS[@]}"}"
[[ $# -ge 1 ]] || die "missing RECIPE; usage: $0 [--dry-run] RECIPE [hydra overrides...]"
recipe="$1"
shift
overrides=("$@")

nnodes="${NNODES:-1}"
node_rank="${NODE_RANK:-0}"
[[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || die "NNODES=$nnodes is not a positive integer"
if ! [[ "$node_rank" =~ ^[0-9]+$ ]] || ((node_rank >= nnodes)); then
    die "NODE_RANK=$node_rank is not in 0..$((nnodes - 1))"
fi

output_dir="$(output_dir_from_overrides "${overrides[@]+"${overrides[@]}"}")"
if [[ -z "$output_dir" ]]; then
    ((nnodes == 1)) || die "NNODES=$nnodes: pass output_dir=<a shared directory>, the same on every machine"
    output_dir="runs/${recipe}-$(date +%Y%m%d-%H%M%S)"
    overrides+=("output_dir=$output_dir")
fi

gpus="$(visible_gpu_count)"
nproc="${NPROC_PER_NODE:-}"
if [[ -z "$nproc" ]]; then
    nproc="$gpus"
    ((nproc > 0)) || nproc=1
fi
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || die "NPROC_PER_NODE=$nproc is not a positive integer"

if ((nnodes > 1)); then
    [[ -n "${MASTER_ADDR:-}" ]] || die "NNODES=$nnodes: set MASTER_ADDR to node 0's address, the same on every machine"
    [[ -n "${MASTER_PORT:-}" ]] || die "NNODES=$nnodes: set MASTER_PORT, the same on every machine"
fi
master_addr="${MASTER_ADDR:-127.0.0.1}"
port="$(master_port)"

log_name=launch.log
command_name=launch_command.sh
if ((node_rank > 0)); then
    log_name="launch.node-$node_rank.log"
    command_name="launch_command.node-$node_rank.sh"
fi

info "output_dir: $output_dir"
info "node $node_rank of $nnodes, $nproc ranks here, master $master_addr:$port"
export_run_environment "$gpus"
export_torchrun_signal_environment

command=(torchrun --nnodes "$nnodes" --node_rank "$node_rank" --nproc_per_node "$nproc"
    --master_addr "$master_addr" --master_port "$port"
    -m safe_rlhf.train --config-name "$recipe" ${overrides[@]+"${overrides[@]}"})
launch_and_log "$output_dir" "$log_name" "$command_name" "${command[@]}"
