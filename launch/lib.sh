# shellcheck shell=bash
# Shared helpers for the launch scripts in this folder; sourced, never run.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Every launcher does the same five things around its one command, in this order:
#   1. parse its leading options (--dry-run, --help) and find or choose output_dir;
#   2. pick a master port (MASTER_PORT if set, otherwise a free one);
#   3. export the environment the run needs (OMP_NUM_THREADS=1 on CPU, WANDB_MODE=offline without WANDB_API_KEY);
#   4. with DRY_RUN=1 or --dry-run: print each command as "+ <command>" (shell-quoted, copy-pasteable) and stop;
#   5. otherwise create output_dir, write the exact command to output_dir/launch_command.sh, run it with stdout and
#      stderr teed into output_dir/launch.log, and exit with the command's own status (not tee's).
# Lines starting with "# " on stdout are information, lines starting with "+ " are commands.

# 1 when the script should only print what it would run.
DRY_RUN="${DRY_RUN:-0}"

die() {
    echo "error: $*" >&2
    exit 2
}

info() {
    echo "# $*"
}

# Print the header comment of a script (the lines after the shebang up to the first non-comment line).
print_usage() {
    local script="$1"
    sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "$script"
}

# Handle the options that may come before the recipe: --dry-run and -h/--help. Sets REST_ARGS to the remaining
# arguments; hydra's own flags (--multirun, --cfg job, ...) after the recipe are forwarded untouched.
parse_leading_options() {
    local script="$1"
    shift
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            -h | --help)
                print_usage "$script"
                exit 0
                ;;
            *) break ;;
        esac
        shift
    done
    # shellcheck disable=SC2034  # read by the script that sourced this file
    REST_ARGS=("$@")
}

is_dry_run() {
    [[ "$DRY_RUN" == "1" || "$DRY_RUN" == "true" || "$DRY_RUN" == "yes" ]]
}

# One word quoted for bash: as it is when it holds only safe characters, otherwise in single quotes.
shell_quote() {
    local word="$1"
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
        printf '%s' "$word"
    else
        printf "'%s'" "${word//\'/\'\\\'\'}"
    fi
}

# A command as one shell-quoted line that bash reads back into the same words.
quote_command() {
    local quoted=()
    local word
    for word in "$@"; do
        quoted+=("$(shell_quote "$word")")
    done
    echo "${quoted[*]}"
}

show_command() {
    echo "+ $(quote_command "$@")"
}

# The value of the last "output_dir=" (or "++output_dir=") override among the arguments, or nothing.
output_dir_from_overrides() {
    local value=""
    local arg
    for arg in "$@"; do
        case "$arg" in
            output_dir=* | ++output_dir=*) value="${arg#*output_dir=}" ;;
        esac
    done
    echo "$value"
}

# The value of the last "train.resume=" override among the arguments, or nothing.
resume_from_overrides() {
    local value=""
    local arg
    for arg in "$@"; do
        case "$arg" in
            train.resume=* | ++train.resume=*) value="${arg#*train.resume=}" ;;
        esac
    done
    echo "$value"
}

# A TCP port nobody listens on now. The same probe as safe_rlhf.distributed.find_free_port (bind to port 0, read
# back the port the kernel chose), written out here so that picking a port does not import torch. Falls back to
# probing random high ports with bash's /dev/tcp when no python is on PATH. Port 0 is never returned: the deepspeed
# launcher hangs with --master_port 0.
find_free_port() {
    local python
    python="$(command -v python3 || command -v python || true)"
    if [[ -n "$python" ]]; then
        "$python" -c 'import socket
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1])' && return 0
    fi
    local port attempt
    for attempt in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        # A refused connection means nobody listens there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "found no free port after $attempt attempts; set MASTER_PORT"
}

# MASTER_PORT when set (checked to be a usable port), otherwise a free one.
master_port() {
    if [[ -n "${MASTER_PORT:-}" ]]; then
        if ! [[ "$MASTER_PORT" =~ ^[0-9]+$ ]] || ((MASTER_PORT < 1 || MASTER_PORT > 65535)); then
            die "MASTER_PORT=$MASTER_PORT is not a port in 1-65535"
        fi
        echo "$MASTER_PORT"
    else
        find_free_port
    fi
}

# Number of visible NVIDIA GPUs: the entries of CUDA_VISIBLE_DEVICES when it is set, otherwise what nvidia-smi
# lists; 0 without nvidia-smi (or when it fails: no driver).
visible_gpu_count() {
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        local devices
        IFS=',' read -r -a devices <<<"$CUDA_VISIBLE_DEVICES"
        echo "${#devices[@]}"
        return 0
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
        local listing
        listing="$(nvidia-smi -L 2>/dev/null || true)"
        grep -c '^GPU ' <<<"$listing" || true
        return 0
    fi
    echo 0
}

# Environment every launcher sets before starting the run (printed as "+ export ..." in a dry run):
# - OMP_NUM_THREADS=1 on a CPU-only machine unless already set: several CPU ranks each using every core run 3-4x
#   slower than one thread per rank.
# - WANDB_MODE=offline when WANDB_API_KEY is not set and WANDB_MODE is not chosen already: logger=wandb then writes
#   into output_dir/wandb instead of failing to log in (upload later with `wandb sync`).
# EXPORTED_VARS lists what was set, for launch_command.sh.
EXPORTED_VARS=()
export_run_environment() {
    local gpus="$1"
    if [[ "$gpus" -eq 0 && -z "${OMP_NUM_THREADS:-}" ]]; then
        export OMP_NUM_THREADS=1
        EXPORTED_VARS+=(OMP_NUM_THREADS)
    fi
    if [[ -z "${WANDB_API_KEY:-}" && -z "${WANDB_MODE:-}" ]]; then
        export WANDB_MODE=offline
        EXPORTED_VARS+=(WANDB_MODE)
    fi
    show_exports
}

# torchrun only: let a SIGUSR1 reach the ranks and give them time to save. By default torchrun handles SIGTERM,
# SIGINT, SIGHUP and SIGQUIT (forwarding them to its ranks) but dies on SIGUSR1 without telling its ranks, and it
# SIGKILLs ranks that have not exited 30 s after forwarding a signal, too short to save a large model. torchrun reads
# its --signals_to_handle / --shutdown_timeout options from PET_* variables; older torch versions ignore them (and
# read TORCH_ELASTIC_SHUTDOWN_TIMEOUT, or keep 30 s).
export_torchrun_signal_environment() {
    if [[ -z "${PET_SIGNALS_TO_HANDLE:-}" ]]; then
        export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
        EXPORTED_VARS+=(PET_SIGNALS_TO_HANDLE)
    fi
    local timeout="${PET_SHUTDOWN_TIMEOUT:-${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}}"
    if [[ "${PET_SHUTDOWN_TIMEOUT:-}" != "$timeout" ]]; then
        export PET_SHUTDOWN_TIMEOUT="$timeout"
        EXPORTED_VARS+=(PET_SHUTDOWN_TIMEOUT)
    fi
    if [[ "${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-}" != "$timeout" ]]; then
        export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="$timeout"
        EXPORTED_VARS+=(TORCH_ELASTIC_SHUTDOWN_TIMEOUT)
    fi
    show_exports
}

# In a dry run, print "+ export NAME=VALUE" for each variable set since the last call.
SHOWN_EXPORTS=0
show_exports() {
    local index
    for ((index = SHOWN_EXPORTS; index < ${#EXPORTED_VARS[@]}; index++)); do
        local name="${EXPORTED_VARS[index]}"
        if is_dry_run; then
            echo "+ export $name=$(shell_quote "${!name}")"
        fi
    done
    SHOWN_EXPORTS="${#EXPORTED_VARS[@]}"
}

# Write FILE: a script that re-runs the command from the same directory with the same environment choices.
write_command_file() {
    local file="$1"
    shift
    {
        echo "#!/usr/bin/env bash"
        echo "# Written by $(quote_command "$0") on $(date '+%Y-%m-%d %H:%M:%S %z') on $(hostname)."
        echo "cd $(shell_quote "$PWD")"
        local name
        for name in "${EXPORTED_VARS[@]}" ${EXTRA_COMMAND_VARS[@]+"${EXTRA_COMMAND_VARS[@]}"}; do
            if [[ -n "${!name+set}" ]]; then
                echo "export $name=$(shell_quote "${!name}")"
            fi
        done
        quote_command "$@"
    } >"$file"
    chmod +x "$file"
}

# Run a command with stdout and stderr appended to LOG (and still shown), and return the command's status.
run_logged() {
    local log="$1"
    shift
    local status
    set +e
    "$@" 2>&1 | tee -a "$log"
    status="${PIPESTATUS[0]}"
    set -e
    return "$status"
}

# The usual ending of a launcher: print the command (dry run) or create output_dir, record the command, run it.
# Usage: launch_and_log OUTPUT_DIR LOG_NAME COMMAND_FILE_NAME COMMAND...
launch_and_log() {
    local output_dir="$1" log_name="$2" command_name="$3"
    shift 3
    if is_dry_run; then
        show_command "$@"
        return 0
    fi
    mkdir -p "$output_dir"
    write_command_file "$output_dir/$command_name" "$@"
    info "command: $output_dir/$command_name" | tee -a "$output_dir/$log_name"
    info "log: $output_dir/$log_name" | tee -a "$output_dir/$log_name"
    local status=0
    run_logged "$output_dir/$log_name" "$@" || status=$?
    if [[ "$status" -ne 0 ]]; then
        echo "# exit status $status$([[ "$status" -eq 75 ]] && echo ' (checkpoint saved, requeue: rerun with train.resume=auto)')" |
            tee -a "$output_dir/$log_name"
    fi
    return "$status"
}

# Studies (launch/*_study.sh): study_stage NAME DONE_FILE MODULE ARGS... runs "$PYTHON -m MODULE ARGS..." unless
# DONE_FILE exists (a killed study continues where it stopped), its output in "$OUT/logs/NAME.log"; a failing stage
# names its log, shows its last lines and stops the study with status 1.
# shellcheck disable=SC2153  # PYTHON and OUT are the calling study's
study_stage() {
    local name=$1 done_file=$2 module=$3
    shift 3
    if [ -e "$done_file" ]; then
        echo "$name: done before"
        return
    fi
    echo "$name: $PYTHON -m $module $*"
    local start=$SECONDS
    "$PYTHON" -m "$module" "$@" >"$OUT/logs/$name.log" 2>&1 || {
        echo "$name failed; see $OUT/logs/$name.log" >&2
        tail -5 "$OUT/logs/$name.log" >&2
        exit 1
    }
    echo "$name: $((SECONDS - start)) s"
}

# Studies: select_study_runs SCRIPT RUN... sets STUDY_RUNS to the space-separated names in $RUNS (a subset, in the
# order given) or to every RUN; a name that is not a RUN stops the study with a one-line error and status 2.
select_study_runs() {
    local script=$1
    shift
    local all=" $* " run
    read -r -a STUDY_RUNS <<<"${RUNS:-$*}"
    for run in "${STUDY_RUNS[@]}"; do
        [[ "$all" == *" $run "* ]] || {
            echo "$script: RUNS has an unknown run '$run'" >&2
            exit 2
        }
    done
}
