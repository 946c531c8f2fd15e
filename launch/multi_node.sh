#!/usr/bin/env bash
# Train on several machines with the deepspeed launcher and a hostfile. Run it on the first host of the hostfile.
#
# Usage:
#   launch/multi_node.sh [--dry-run] HOSTFILE RECIPE [hydra overrides...]
#
# Example (2 nodes x 8 GPUs):
#   printf 'node1 slots=8\nnode2 slots=8\n' > hostfile
#   launch/multi_node.sh hostfile sft deepspeed=zero3 output_dir=/shared/runs/sft-70b
#
# Runs:
#   deepspeed --hostfile HOSTFILE --master_addr ADDR --master_port PORT [--launcher LAUNCHER] [--num_nodes N] \
#       [--num_gpus G] --module safe_rlhf.train --config-name RECIPE OVERRIDES [output_dir=runs/RECIPE-<timestamp>]
#
# HOSTFILE: one line per machine, "<hostname> slots=<GPUs on it>"; lines starting with # are ignored.
#
# What the deepspeed launcher needs (it starts the ranks on every host itself):
#   - passwordless ssh from this machine to every host in the hostfile, this one included (ssh node1 true must work
#     without a prompt), and the host keys accepted;
#   - pdsh installed on this machine (the default launcher), or LAUNCHER=openmpi (mpirun), mvapich, mpich, impi or
#     slurm and that launcher installed;
#   - the repository and the virtual environment at the same path on every host (the launcher runs this machine's
#     python, by path, in this directory, on each host); output_dir on a filesystem all hosts share;
#   - environment variables the ranks need (NCCL_SOCKET_IFNAME, WANDB_API_KEY, HF_HOME, OMP_NUM_THREADS, ...) in a
#     file named .deepspeed_env, one NAME=VALUE per line, in this directory or in your home directory: the
#     launcher exports only PYTHON*, NCCL*, UCX*, MV2*, MLFLOW* variables on its own.
#
# Environment:
#   MASTER_ADDR  address of rank 0 (default: the first host in HOSTFILE)
#   MASTER_PORT  rendezvous port (default: a port free on this machine, which should be the first host)
#   LAUNCHER     deepspeed's --launcher (default: pdsh)
#   NUM_NODES    use only the first N hosts of HOSTFILE (deepspeed's --num_nodes)
#   NUM_GPUS     use at most G GPUs per host (deepspeed's --num_gpus; default: the host's slots)
#   DRY_RUN=1    print the commands (lines starting with "+ ") and run nothing; same as --dry-run
#
# output_dir, output_dir/launch_command.sh, output_dir/launch.log and the exit status (75 = checkpoint saved, rerun
# with train.resume=auto) behave as in launch/single_node.sh.
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_leading_options "$0" "$@"
set -- "${REST_ARGS[@]+"${REST_ARGS[@]}"}"
[[ $# -ge 2 ]] || die "missing HOSTFILE or RECIPE; usage: $0 [--dry-run] HOSTFILE RECIPE [hydra overrides...]"
hostfile="$1"
recipe="$2"
shift 2
overrides=("$@")

[[ -f "$hostfile" ]] || die "hostfile $hostfile does not exist (one line per host: '<hostname> slots=<GPUs>')"
first_host="$(awk '!/^[[:space:]]*(#|$)/ {print $1; exit}' "$hostfile")"
[[ -n "$first_host" ]] || die "hostfile $hostfile lists no host (one line per host: '<hostname> slots=<GPUs>')"
master_addr="${MASTER_ADDR:-$first_host}"

output_dir="$(output_dir_from_overrides "${overrides[@]+"${overrides[@]}"}")"
if [[ -z "$output_dir" ]]; then
    output_dir="runs/${recipe}-$(date +%Y%m%d-%H%M%S)"
    overrides+=("output_dir=$output_dir")
fi

launcher_flags=()
if [[ -n "${LAUNCHER:-}" ]]; then
    launcher_flags+=(--launcher "$LAUNCHER")
elif ! command -v pdsh >/dev/null 2>&1; then
    info "warning: pdsh is not on PATH; install it or set LAUNCHER=openmpi (or mvapich, mpich, impi, slurm)"
fi
if [[ -n "${NUM_NODES:-}" ]]; then
    [[ "$NUM_NODES" =~ ^[1-9][0-9]*$ ]] || die "NUM_NODES=$NUM_NODES is not a positive integer"
    launcher_flags+=(--num_nodes "$NUM_NODES")
fi
if [[ -n "${NUM_GPUS:-}" ]]; then
    [[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS=$NUM_GPUS is not a positive integer"
    launcher_flags+=(--num_gpus "$NUM_GPUS")
fi
if [[ ! -f .deepspeed_env && ! -f "$HOME/.deepspeed_env" ]]; then
    info "note: no .deepspeed_env here or in \$HOME; environment variables other than PYTHON*/NCCL* do not reach" \
        "the other hosts"
fi

port="$(master_port)"
info "output_dir: $output_dir"
info "hosts: $(awk '!/^[[:space:]]*(#|$)/ {printf "%s%s", sep, $0; sep=", "}' "$hostfile")"
info "master: $master_addr:$port"
export_run_environment "$(visible_gpu_count)"

command=(deepspeed --hostfile "$hostfile" --master_addr "$master_addr" --master_port "$port"
    ${launcher_flags[@]+"${launcher_flags[@]}"}
    --module safe_rlhf.train --config-name "$recipe" ${overrides[@]+"${overrides[@]}"})
launch_and_log "$output_dir" launch.log launch_command.sh "${command[@]}"
