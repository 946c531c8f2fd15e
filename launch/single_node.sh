#!/usr/bin/env bash
# Train on one machine with the deepspeed launcher: one rank per visible GPU (one rank on a CPU-only machine).
#
# Usage:
#   launch/single_node.sh [--dry-run] RECIPE [hydra overrides...]
#
# Examples:
#   launch/single_node.sh sft deepspeed=zero3 output_dir=runs/sft-zero3
#   NUM_GPUS=4 launch/single_node.sh sft optim.lr=1e-5
#   NUM_GPUS=2 launch/single_node.sh sft train.epochs=1          # CPU-only machine: 2 ranks on gloo
#   DRY_RUN=1 launch/single_node.sh sft                          # print the command, run nothing
#
# Runs:
#   deepspeed [--num_gpus NUM_GPUS] --master_port PORT --module safe_rlhf.train --config-name RECIPE OVERRIDES \
#       [output_dir=runs/RECIPE-<timestamp>]
#
# Environment:
#   NUM_GPUS     ranks to start (default: every GPU in CUDA_VISIBLE_DEVICES / nvidia-smi; 1 without GPUs)
#   MASTER_PORT  rendezvous port (default: a free port)
#   DRY_RUN=1    print the commands (lines starting with "+ ") and run nothing; same as --dry-run
#   OMP_NUM_THREADS is set to 1 on a CPU-only machine unless set; WANDB_MODE=offline when WANDB_API_KEY is unset.
#
# output_dir is the output_dir= override when given, otherwise runs/RECIPE-<timestamp> (appended as an override, so
# every rank writes to the same place). The script creates it, writes the exact command to
# output_dir/launch_command.sh, tees everything into output_dir/launch.log and exits with the training's status
# (75: a checkpoint was saved after SIGTERM/SIGUSR1; rerun with train.resume=auto to continue).
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_leading_options "$0" "$@"
set -- "${REST_ARGS[@]+"${REST_ARGS[@]}"}"
[[ $# -ge 1 ]] || die "missing RECIPE; usage: $0 [--dry-run] RECIPE [hydra overrides...]"
recipe="$1"
shift
overrides=("$@")

output_dir="$(output_dir_from_overrides "${overrides[@]+"${overrides[@]}"}")"
if [[ -z "$output_dir" ]]; then
    output_dir="runs/${recipe}-$(date +%Y%m%d-%H%M%S)"
    overrides+=("output_dir=$output_dir")
fi

gpus="$(visible_gpu_count)"
rank_flags=()
if [[ -n "${NUM_GPUS:-}" ]]; then
    [[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS=$NUM_GPUS is not a positive integer"
    rank_flags=(--num_gpus "$NUM_GPUS")
elif [[ "$gpus" -eq 0 ]]; then
    # No GPU: one CPU rank (the deepspeed launcher's own CPU default depends on the machine's NUMA layout).
    rank_flags=(--num_gpus 1)
fi
# With GPUs and no NUM_GPUS, no flag: the launcher then uses every visible GPU and honours CUDA_VISIBLE_DEVICES
# (passing --num_gpus would make it ignore CUDA_VISIBLE_DEVICES and take GPUs 0..N-1).

port="$(master_port)"
info "output_dir: $output_dir"
info "visible GPUs: $gpus"
export_run_environment "$gpus"

command=(deepspeed ${rank_flags[@]+"${rank_flags[@]}"} --master_port "$port"
    --module safe_rlhf.train --config-name "$recipe" ${overrides[@]+"${overrides[@]}"})
launch_and_log "$output_dir" launch.log launch_command.sh "${command[@]}"
