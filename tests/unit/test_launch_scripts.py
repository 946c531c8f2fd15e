"""The launch scripts in launch/: syntax, the exact commands their dry runs print, and what a real run records.

No training starts here. A stub directory goes first on PATH: its ``deepspeed``, ``torchrun``, ``srun`` and
``scontrol`` only append their arguments to a JSON-lines log and exit with a chosen status, and its ``nvidia-smi``
fails (no driver), so every machine looks CPU-only unless a test says otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH_DIR = REPO_ROOT / "launch"
SCRIPTS = sorted([*LAUNCH_DIR.glob("*.sh"), *LAUNCH_DIR.glob("*.sbatch")])
LAUNCHERS = [LAUNCH_DIR / name for name in ("single_node.sh", "multi_node.sh", "torchrun.sh", "slurm.sbatch")]

# Variables the scripts read; removed from the test environment so the host's settings do not leak in.
SCRIPT_VARIABLES = (
    "CUDA_VISIBLE_DEVICES DRY_RUN FORWARD_SIGNAL LAUNCHER MASTER_ADDR MASTER_PORT NNODES NODE_RANK NPROC_PER_NODE "
    "NUM_GPUS NUM_NODES OMP_NUM_THREADS PET_SHUTDOWN_TIMEOUT PET_SIGNALS_TO_HANDLE SAFE_RLHF_NODES SAFE_RLHF_ROOT "
    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT WANDB_API_KEY WANDB_MODE"
).split()

# A recording stand-in for a launcher: logs {"name", "argv", "event"} lines, prints to stdout and stderr, sleeps
# STUB_SLEEP seconds, exits STUB_STATUS; on SIGTERM/SIGUSR1 it logs the signal and exits STUB_SIGNAL_STATUS.
# With STUB_SRUN_RUNS_TASK=1, srun runs its task (the "bash -c ..." part) as node 0 and exits with its status.
RECORDING_STUB = """\
import json, os, signal, subprocess, sys, time

name = os.path.basename(sys.argv[0])


def record(event):
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(json.dumps({"name": name, "argv": sys.argv[1:], "event": event}) + "\\n")


def on_signal(signum, frame):
    record("signal " + signal.Signals(signum).name)
    sys.exit(int(os.environ.get("STUB_SIGNAL_STATUS", "1")))


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGUSR1, on_signal)
record("start")
if name == "srun" and os.environ.get("STUB_SRUN_RUNS_TASK") == "1":
    task = sys.argv[sys.argv.index("bash") :]
    sys.exit(subprocess.run(task, env={**os.environ, "SLURM_NODEID": "0"}).returncode)
if name != "scontrol":
    print(f"stub {name} stdout", flush=True)
    print(f"stub {name} stderr", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get("STUB_SLEEP", "0")))
    sys.exit(int(os.environ.get("STUB_STATUS", "0")))
"""

# nvidia-smi: lists STUB_GPUS GPUs, or fails like a machine without a driver when STUB_GPUS is unset.
NVIDIA_SMI_STUB = """\
import os, sys

count = int(os.environ.get("STUB_GPUS", "0"))
if count == 0:
    sys.exit(9)
for index in range(count):
    print(f"GPU {index}: Stub GPU (UUID: GPU-{index})")
"""


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    stub_dir = tmp_path / "stub-bin"
    stub_dir.mkdir()
    for name, body in [(n, RECORDING_STUB) for n in ("deepspeed", "torchrun", "srun", "scontrol", "pdsh")] + [
        ("nvidia-smi", NVIDIA_SMI_STUB)
    ]:
        path = stub_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    return stub_dir


@pytest.fixture
def stub_log(tmp_path: Path) -> Path:
    return tmp_path / "stub-calls.jsonl"


def calls(stub_log: Path) -> list[dict]:
    if not stub_log.exists():
        return []
    return [json.loads(line) for line in stub_log.read_text().splitlines()]


def script_env(stubs: Path, stub_log: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARIABLES and not k.startswith("SLURM_")}
    env["PATH"] = f"{stubs}{os.pathsep}{env.get('PATH', '')}"
    env["STUB_LOG"] = str(stub_log)
    env.update(extra)
    return env


def run_script(script: Path, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def printed_commands(stdout: str) -> list[list[str]]:
    """Each "+ <command>" line of a dry run, split back into words the way bash would."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def printed_command(stdout: str, program: str) -> list[str]:
    matching = [command for command in printed_commands(stdout) if command[0] == program]
    assert len(matching) == 1, f"expected one '+ {program} ...' line in:\n{stdout}"
    return matching[0]


def flag_value(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def assert_valid_port(value: str) -> int:
    port = int(value)
    assert 0 < port < 65536
    return port


def assert_dry_run_started_nothing(stub_log: Path, output_dir: Path) -> None:
    assert calls(stub_log) == [], "a dry run called a launcher"
    assert not output_dir.exists(), "a dry run created the output directory"


OVERRIDES = ["deepspeed=zero2", "optim.lr=1e-5", "train.epochs=1"]
# Rare in hydra overrides, but it must stay one word through quoting, launch_command.sh and bash -c.
SPACED_OVERRIDE = "data.train=[a.jsonl, 'b c.jsonl']"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_script_passes_bash_syntax_check(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck():
    result = subprocess.run(
        ["shellcheck", "-x", *(str(path.relative_to(REPO_ROOT)) for path in SCRIPTS)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda path: path.name)
def test_launcher_has_usage_header_and_strict_mode(script, stubs, stub_log, tmp_path):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    result = run_script(script, ["--help"], script_env(stubs, stub_log), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert calls(stub_log) == []


def recording_python(stubs: Path) -> Path:
    """A ``python`` that records its arguments like the launcher stubs (the study scripts call "$PYTHON -m ...")."""
    python = stubs / "python"
    python.write_text(f"#!{sys.executable}\n{RECORDING_STUB}")
    python.chmod(0o755)
    return python


def test_every_launcher_is_tested():
    studies = {"system_message_study.sh", "length_study.sh", "steerlm_study.sh", "lora_study.sh", "lagrange_study.sh"}
    assert {path.name for path in SCRIPTS} == {path.name for path in LAUNCHERS} | {"lib.sh"} | studies


# ---- the study scripts (not launchers: their stages are python -m calls, recorded by a stub python)


def test_lora_study_compares_lora_and_full_ppo_lag_on_the_same_models(stubs, stub_log, tmp_path):
    python = recording_python(stubs)
    result = run_script(LAUNCH_DIR / "lora_study.sh", ["3", str(tmp_path / "study")],
                        script_env(stubs, stub_log, PYTHON=str(python)), tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    argvs = {next(a.split("=", 1)[1] for a in c["argv"] if a.startswith("output_dir=")).rsplit("/", 1)[1]: c["argv"]
             for c in calls(stub_log)}  # fmt: skip
    assert list(argvs) == ["sft", "reward_model", "cost_model", "ppo_lag", "ppo_lag_lora", "ppo_lag_lora_lr3e-3",
                           "ppo_lag_lora_all", "arena"]  # fmt: skip
    root = tmp_path / "study" / "seed-3"
    runs = ("ppo_lag", "ppo_lag_lora", "ppo_lag_lora_all")
    for run in runs:  # the same models, seed and recipe; only the LoRA settings differ
        assert f"actor.name_or_path={root / 'sft' / 'model'}" in argvs[run] and "seed=3" in argvs[run]
        assert f"reward_model={root / 'reward_model' / 'model'}" in argvs[run]
        assert argvs[run][argvs[run].index("--config-name") + 1] == "ppo_lag"
    assert not any(a.startswith(("actor.lora", "critic_lora")) for a in argvs["ppo_lag"])
    assert (
        "actor.lora.enabled=true" in argvs["ppo_lag_lora"] and "critic_lora.enabled=true" not in argvs["ppo_lag_lora"]
    )
    assert "critic_lora.enabled=true" in argvs["ppo_lag_lora_all"]
    assert all(f"+policies.{run}={root / run / 'model'}" in argvs["arena"] for run in runs)
    assert f"+policies.ppo_lag_lora_lr3e_3={root / 'ppo_lag_lora_lr3e-3' / 'model'}" in argvs["arena"]
    assert "actor_optim.lr=3e-3" in argvs["ppo_lag_lora_lr3e-3"]


def test_steerlm_study_trains_labels_and_asks_for_low_and_high_verbosity(stubs, stub_log, tmp_path):
    python = recording_python(stubs)
    result = run_script(LAUNCH_DIR / "steerlm_study.sh", ["5", str(tmp_path / "study")],
                        script_env(stubs, stub_log, PYTHON=str(python)), tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    argvs = [c["argv"] for c in calls(stub_log)]
    modules = [argv[1] for argv in argvs]
    train, evaluate = "safe_rlhf.train", "safe_rlhf.evaluate"
    assert modules == [train, train, train, "safe_rlhf.steer", train, train, *[evaluate] * 4]
    root = tmp_path / "study" / "seed-5"
    assert "data.steer_attributes=[verbosity]" in argvs[1]
    assert argvs[3][2:] == ["label", "--model", str(root / "attribute_model" / "model"), "--data", "toyworld:sft",
                            "--out", str(root / "labelled_sft.jsonl")]  # fmt: skip
    assert f"data.train=helpsteer:{root / 'labelled_sft.jsonl'}" in argvs[4]
    requests = [next(a for a in argv if a.startswith("++data.steer_request=")) for argv in argvs[-4:]]
    assert [r.split("=", 1)[1] for r in requests[2:]] == ["{verbosity:0}", "{verbosity:4}"]
    assert [r.rsplit(":", 1)[1] for r in requests[:2]] == ["0}", "4}"]


def test_length_study_runs_every_intervention_with_the_same_budget(stubs, stub_log, tmp_path):
    python = recording_python(stubs)
    result = run_script(LAUNCH_DIR / "length_study.sh", ["4", str(tmp_path / "study")],
                        script_env(stubs, stub_log, PYTHON=str(python)), tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    argvs = {next(a.split("=", 1)[1] for a in c["argv"] if a.startswith("output_dir=")).rsplit("/", 1)[1]: c["argv"]
             for c in calls(stub_log)}  # fmt: skip
    assert list(argvs) == ["sft", "reward_model", "rm_balanced", "rm_random_negatives", "cost_model", "ppo",
                           "ppo_kl0.5", "ppo_length_penalty", "ppo_length_penalty0.1", "ppo_length_penalty0.2",
                           "ppo_reward_scaling",
                           "ppo_length_only", "ppo_rm_balanced", "ppo_rm_random_negatives",
                           "ppo_rm_balanced_length_penalty", "ppo_length_penalty0.075", "ppo_length_penalty0.15",
                           "ppo_kl0.5_length_penalty", "ppo_kl0.4_length_penalty", "ppo_kl0.5_length_penalty0.04",
                           "arena", "length_bias"]  # fmt: skip
    assert "score.random_negative_fraction=0.5" in argvs["rm_random_negatives"]
    assert "ppo.length_only_reward_target=12" in argvs["ppo_length_only"]
    root = tmp_path / "study" / "seed-4"
    assert f"reward_model={root / 'rm_balanced' / 'model'}" in argvs["ppo_rm_balanced"]
    combined = argvs["ppo_rm_balanced_length_penalty"]
    assert f"reward_model={root / 'rm_balanced' / 'model'}" in combined and "ppo.length_penalty_coeff=0.05" in combined
    # every PPO run: the same config (budget), one setting apart
    ppo_runs = [name for name in argvs if name.startswith("ppo")]
    assert all("--config-name" in argvs[n] and argvs[n][argvs[n].index("--config-name") + 1] == "ppo" for n in ppo_runs)
    assert f"+policies.ppo_kl0p5={root / 'ppo_kl0.5' / 'model'}" in argvs["arena"]
    both = argvs["ppo_kl0.5_length_penalty"]  # two settings in one run, each its own override
    assert "ppo.kl_coeff=0.5" in both and "ppo.length_penalty_coeff=0.05" in both


def test_length_study_runs_a_subset_with_only_the_reward_models_it_needs(stubs, stub_log, tmp_path):
    python = recording_python(stubs)
    env = script_env(stubs, stub_log, PYTHON=str(python), RUNS="ppo ppo_length_penalty0.15")
    result = run_script(LAUNCH_DIR / "length_study.sh", ["5", str(tmp_path / "study")], env, tmp_path)
    assert result.returncode == 0, result.stderr
    stages = [next(a.split("=", 1)[1] for a in c["argv"] if a.startswith("output_dir=")).rsplit("/", 1)[1]
              for c in calls(stub_log)]  # fmt: skip
    assert stages == ["sft", "reward_model", "cost_model", "ppo", "ppo_length_penalty0.15", "arena", "length_bias"]
    arena = calls(stub_log)[-2]["argv"]
    assert sum(a.startswith("+policies.") for a in arena) == 3  # sft and the two runs


def test_length_study_refuses_an_unknown_run_in_one_line(stubs, stub_log, tmp_path):
    python = recording_python(stubs)
    env = script_env(stubs, stub_log, PYTHON=str(python), RUNS="ppo ppo_typo")
    result = run_script(LAUNCH_DIR / "length_study.sh", ["5", str(tmp_path / "study")], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "length_study.sh: RUNS has an unknown run 'ppo_typo'"
    assert calls(stub_log) == []  # refused before any stage ran


def test_lagrange_study_runs_variants_on_the_pipelines_models_with_its_sweep_in_one_arena(stubs, stub_log, tmp_path):
    python = recording_python(stubs)
    base = tmp_path / "pipeline" / "seed-2"
    runs = ("sft", "reward_model", "cost_model", "ppo", "ppo_lag", "ppo_reward_shaping_0.1", "ppo_reward_shaping_2")
    for run in runs:
        (base / run / "model").mkdir(parents=True)
        (base / run / "model" / "config.json").write_text("{}")
    args = ["2", str(tmp_path / "pipeline"), str(tmp_path / "study")]
    env = script_env(stubs, stub_log, PYTHON=str(python))
    result = run_script(LAUNCH_DIR / "lagrange_study.sh", args, env, tmp_path)
    assert result.returncode == 0, result.stderr
    *trains, arena = [c["argv"] for c in calls(stub_log)]
    root = tmp_path / "study" / "seed-2"
    gains1, gains4 = (
        "lagrange.init=0.1 lagrange.lr=1.0 lagrange.kp=5.0",
        "lagrange.init=0.025 lagrange.lr=0.25 lagrange.kp=1.25",
    )
    # Each spelled out in full, the margin included: it means the same run whatever conf/ppo_lag.yaml ships.
    variants = {
        "indicator_pid": f"lagrange.rate_stream=indicator {gains1} lagrange.margin=0",
        "critic_fresh": f"lagrange.critic_head=fresh lagrange.rate_stream=indicator {gains1} lagrange.margin=0",
        "stream_probability": f"lagrange.rate_stream=probability {gains1} lagrange.margin=0",
        "stream_score": f"lagrange.rate_stream=score {gains1} lagrange.margin=0",
        "score_pid10": "lagrange.rate_stream=score lagrange.init=0.01 lagrange.lr=0.1 lagrange.kp=0.5"
        " lagrange.margin=0",
        "score_pid4": f"lagrange.rate_stream=score {gains4} lagrange.margin=0",
        "score_window64": f"lagrange.rate_stream=score {gains4} lagrange.margin=0 lagrange.window_size=64",
        "score_ema": f"lagrange.rate_stream=score {gains4} lagrange.margin=0 lagrange.p_ema_alpha=0.5",
        "score_margin": f"lagrange.rate_stream=score {gains4} lagrange.margin=0.01",
    }
    assert len(trains) == len(variants)
    for train, (name, setting) in zip(trains, variants.items()):
        assert f"output_dir={root / name}" in train and all(word in train for word in setting.split())
        assert train[train.index("--config-name") + 1] == "ppo_lag" and "train.select_steps=10" in train
        for key in ("train.select_steps=", "lagrange.margin="):  # once each: hydra refuses a repeated key
            assert sum(word.startswith(key) for word in train) == 1
        assert f"cost_model={base / 'cost_model' / 'model'}" in train and "seed=2" in train
    policies = sorted(a.split("=", 1)[0] for a in arena if a.startswith("+policies."))
    assert policies == [
        "+policies." + name
        for name in sorted(
            (
                *variants,
                "ppo",
                "ppo_lag",
                "sft",
                "shaping_0p1",
                "shaping_2",
            )
        )
    ]
    assert f"+policies.shaping_0p1={base / 'ppo_reward_shaping_0.1' / 'model'}" in arena


def test_lagrange_study_needs_the_pipeline_run_first(stubs, stub_log, tmp_path):
    python = recording_python(stubs)
    args = ["4", str(tmp_path / "nowhere")]
    env = script_env(stubs, stub_log, PYTHON=str(python))
    result = run_script(LAUNCH_DIR / "lagrange_study.sh", args, env, tmp_path)
    assert result.returncode == 2
    assert "nowhere/seed-4/sft/model is missing" in result.stderr.strip().splitlines()[-1]
    assert calls(stub_log) == []


def test_lagrange_study_refuses_an_unknown_run_in_one_line(stubs, stub_log, tmp_path):
    python = recording_python(stubs)
    base = tmp_path / "pipeline" / "seed-1"
    for run in ("sft", "reward_model", "cost_model", "ppo", "ppo_lag"):
        (base / run / "model").mkdir(parents=True)
        (base / run / "model" / "config.json").write_text("{}")
    env = script_env(stubs, stub_log, PYTHON=str(python), RUNS="critic_fresh critic_typo")
    result = run_script(LAUNCH_DIR / "lagrange_study.sh", ["1", str(tmp_path / "pipeline")], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "lagrange_study.sh: RUNS has an unknown run 'critic_typo'"
    assert calls(stub_log) == []


# ---- system_message_study.sh (a study, not a launcher: its stages are python -m calls)


def test_system_message_study_runs_its_stages_in_order_and_stops_on_a_failure(stubs, stub_log, tmp_path):
    python = recording_python(stubs)
    env = script_env(stubs, stub_log, PYTHON=str(python))
    result = run_script(LAUNCH_DIR / "system_message_study.sh", ["7", str(tmp_path / "study")], env, tmp_path)
    assert result.returncode == 0, result.stderr
    argvs = [call["argv"] for call in calls(stub_log)]
    stages = [next(a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")) for argv in argvs]
    root = tmp_path / "study" / "seed-7"
    names = ["sft_varied", "sft_generic", "reward_model", "cost_model", "ppo_lag_pooled", "ppo_lag", "dpo",
             "arena_system_eval", "arena_eval_prompts", "arena_system_eval_authority"]  # fmt: skip
    assert stages == [str(root / name) for name in names]
    assert all("seed=7" in argv for argv in argvs)
    assert "data.train=toyworld:system_sft_generic" in argvs[1] and "data.train=toyworld:system_preference" in argvs[2]
    grouped = argvs[5]
    assert 'lagrange.prompt_groups=[null,"system_kind=authority"]' in grouped
    assert not any(a.startswith("lagrange.prompt_groups") for a in argvs[4])  # the pooled run has one constraint
    assert "data.eval=toyworld:system_eval_authority" in argvs[9]

    # A failing stage stops the study with its log named, exit status 1.
    stub_log.unlink()
    env["STUB_STATUS"] = "3"
    result = run_script(LAUNCH_DIR / "system_message_study.sh", ["8", str(tmp_path / "study")], env, tmp_path)
    assert result.returncode == 1 and len(calls(stub_log)) == 1
    assert "sft_varied failed; see" in result.stderr


# ---- single_node.sh


def test_single_node_dry_run_prints_the_deepspeed_command(stubs, stub_log, tmp_path):
    output_dir = tmp_path / "run"
    overrides = [*OVERRIDES, SPACED_OVERRIDE, f"output_dir={output_dir}"]
    env = script_env(stubs, stub_log, DRY_RUN="1", NUM_GPUS="2")
    result = run_script(LAUNCH_DIR / "single_node.sh", ["sft", *overrides], env, tmp_path)
    assert result.returncode == 0, result.stderr

    command = printed_command(result.stdout, "deepspeed")
    port = flag_value(command, "--master_port")
    assert_valid_port(port)
    assert command == [
        "deepspeed", "--num_gpus", "2", "--master_port", port,
        "--module", "safe_rlhf.train", "--config-name", "sft", *overrides,
    ]  # fmt: skip
    # CPU-only (the nvidia-smi stub fails) and no WANDB_API_KEY: one thread per rank, offline wandb.
    assert ["export", "OMP_NUM_THREADS=1"] in printed_commands(result.stdout)
    assert ["export", "WANDB_MODE=offline"] in printed_commands(result.stdout)
    assert_dry_run_started_nothing(stub_log, output_dir)


def test_single_node_appends_a_timestamped_output_dir_when_none_is_given(stubs, stub_log, tmp_path):
    result = run_script(
        LAUNCH_DIR / "single_node.sh", ["--dry-run", "sft", *OVERRIDES], script_env(stubs, stub_log), tmp_path
    )
    assert result.returncode == 0, result.stderr

    command = printed_command(result.stdout, "deepspeed")
    assert command[-4:-1] == OVERRIDES
    assert re.fullmatch(r"output_dir=runs/sft-\d{8}-\d{6}", command[-1])
    # no GPU and no NUM_GPUS: one CPU rank
    assert flag_value(command, "--num_gpus") == "1"
    assert_dry_run_started_nothing(stub_log, tmp_path / "runs")


def test_single_node_uses_every_visible_gpu_without_num_gpus(stubs, stub_log, tmp_path):
    env = script_env(stubs, stub_log, DRY_RUN="1", STUB_GPUS="4", WANDB_API_KEY="secret")
    result = run_script(LAUNCH_DIR / "single_node.sh", ["sft", f"output_dir={tmp_path / 'run'}"], env, tmp_path)
    assert result.returncode == 0, result.stderr

    # No --num_gpus: the deepspeed launcher then takes every visible GPU and honours CUDA_VISIBLE_DEVICES.
    assert "--num_gpus" not in printed_command(result.stdout, "deepspeed")
    # GPUs present and a wandb key: neither variable is touched.
    assert [c for c in printed_commands(result.stdout) if c[0] == "export"] == []


def test_single_node_takes_master_port_from_the_environment(stubs, stub_log, tmp_path):
    env = script_env(stubs, stub_log, DRY_RUN="1", MASTER_PORT="29555")
    result = run_script(LAUNCH_DIR / "single_node.sh", ["sft", f"output_dir={tmp_path}/run"], env, tmp_path)
    assert flag_value(printed_command(result.stdout, "deepspeed"), "--master_port") == "29555"

    env["MASTER_PORT"] = "0"  # the deepspeed launcher hangs on port 0
    result = run_script(LAUNCH_DIR / "single_node.sh", ["sft"], env, tmp_path)
    assert result.returncode == 2
    assert "MASTER_PORT=0" in result.stderr


def test_single_node_without_recipe_fails_with_usage(stubs, stub_log, tmp_path):
    result = run_script(LAUNCH_DIR / "single_node.sh", [], script_env(stubs, stub_log, DRY_RUN="1"), tmp_path)
    assert result.returncode == 2
    assert "missing RECIPE" in result.stderr


@pytest.mark.parametrize("status", [0, 75, 3])
def test_single_node_run_records_command_and_log_and_returns_the_training_status(stubs, stub_log, tmp_path, status):
    output_dir = tmp_path / "run"
    overrides = [*OVERRIDES, SPACED_OVERRIDE, f"output_dir={output_dir}"]
    env = script_env(stubs, stub_log, NUM_GPUS="2", STUB_STATUS=str(status))
    result = run_script(LAUNCH_DIR / "single_node.sh", ["sft", *overrides], env, tmp_path)

    # The training's status, not tee's (which is 0).
    assert result.returncode == status, result.stdout + result.stderr
    [call] = calls(stub_log)
    assert call["name"] == "deepspeed"
    port = flag_value(call["argv"], "--master_port")
    assert_valid_port(port)
    expected_argv = ["--num_gpus", "2", "--master_port", port, "--module", "safe_rlhf.train", "--config-name", "sft"]
    assert call["argv"] == [*expected_argv, *overrides]

    log = (output_dir / "launch.log").read_text()
    assert "stub deepspeed stdout" in log
    assert "stub deepspeed stderr" in log
    command_file = output_dir / "launch_command.sh"
    assert os.access(command_file, os.X_OK)
    assert "export WANDB_MODE=offline" in command_file.read_text()

    # launch_command.sh reruns exactly the same command.
    stub_log.unlink()
    rerun = subprocess.run(["bash", str(command_file)], env=env, capture_output=True, text=True, check=False)
    assert rerun.returncode == status
    assert [c["argv"] for c in calls(stub_log)] == [call["argv"]]


# ---- multi_node.sh


def write_hostfile(tmp_path: Path) -> Path:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes, eight GPUs each\n\nnode1 slots=8\nnode2 slots=8\n")
    return hostfile


def test_multi_node_dry_run_prints_the_deepspeed_command_with_the_hostfile(stubs, stub_log, tmp_path):
    hostfile = write_hostfile(tmp_path)
    output_dir = tmp_path / "run"
    overrides = [*OVERRIDES, f"output_dir={output_dir}"]
    env = script_env(stubs, stub_log, DRY_RUN="1")
    result = run_script(LAUNCH_DIR / "multi_node.sh", [str(hostfile), "sft", *overrides], env, tmp_path)
    assert result.returncode == 0, result.stderr

    command = printed_command(result.stdout, "deepspeed")
    port = flag_value(command, "--master_port")
    assert_valid_port(port)
    assert command == [
        "deepspeed", "--hostfile", str(hostfile), "--master_addr", "node1", "--master_port", port,
        "--module", "safe_rlhf.train", "--config-name", "sft", *overrides,
    ]  # fmt: skip
    assert "no .deepspeed_env" in result.stdout
    assert_dry_run_started_nothing(stub_log, output_dir)


def test_multi_node_passes_launcher_options_and_master_address(stubs, stub_log, tmp_path):
    hostfile = write_hostfile(tmp_path)
    env = script_env(
        stubs, stub_log, DRY_RUN="1", LAUNCHER="openmpi", NUM_NODES="1", MASTER_ADDR="10.0.0.5", MASTER_PORT="29601"
    )
    result = run_script(LAUNCH_DIR / "multi_node.sh", [str(hostfile), "sft", "optim.lr=1e-5"], env, tmp_path)
    assert result.returncode == 0, result.stderr

    command = printed_command(result.stdout, "deepspeed")
    assert flag_value(command, "--launcher") == "openmpi"
    assert flag_value(command, "--num_nodes") == "1"
    assert flag_value(command, "--master_addr") == "10.0.0.5"
    assert flag_value(command, "--master_port") == "29601"
    assert command[command.index("--config-name") :][:3] == ["--config-name", "sft", "optim.lr=1e-5"]
    assert re.fullmatch(r"output_dir=runs/sft-\d{8}-\d{6}", command[-1])


def test_multi_node_rejects_a_missing_hostfile(stubs, stub_log, tmp_path):
    env = script_env(stubs, stub_log, DRY_RUN="1")
    result = run_script(LAUNCH_DIR / "multi_node.sh", [str(tmp_path / "nope"), "sft"], env, tmp_path)
    assert result.returncode == 2
    assert "hostfile" in result.stderr


# ---- torchrun.sh


def test_torchrun_dry_run_prints_the_torchrun_command(stubs, stub_log, tmp_path):
    output_dir = tmp_path / "run"
    overrides = [*OVERRIDES, f"output_dir={output_dir}"]
    env = script_env(stubs, stub_log, DRY_RUN="1", NPROC_PER_NODE="2")
    result = run_script(LAUNCH_DIR / "torchrun.sh", ["sft", *overrides], env, tmp_path)
    assert result.returncode == 0, result.stderr

    command = printed_command(result.stdout, "torchrun")
    port = flag_value(command, "--master_port")
    assert_valid_port(port)
    assert command == [
        "torchrun", "--nnodes", "1", "--node_rank", "0", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", port,
        "-m", "safe_rlhf.train", "--config-name", "sft", *overrides,
    ]  # fmt: skip
    # torchrun is told to pass SIGUSR1 on to its ranks.
    assert ["export", "PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"] in printed_commands(result.stdout)
    assert_dry_run_started_nothing(stub_log, output_dir)


def test_torchrun_defaults_to_one_rank_per_visible_gpu(stubs, stub_log, tmp_path):
    env = script_env(stubs, stub_log, DRY_RUN="1", STUB_GPUS="3")
    result = run_script(LAUNCH_DIR / "torchrun.sh", ["sft"], env, tmp_path)
    assert flag_value(printed_command(result.stdout, "torchrun"), "--nproc_per_node") == "3"


def test_torchrun_on_several_nodes_needs_address_port_and_output_dir(stubs, stub_log, tmp_path):
    script = LAUNCH_DIR / "torchrun.sh"
    env = script_env(stubs, stub_log, DRY_RUN="1", NNODES="2", NODE_RANK="1")
    result = run_script(script, ["sft"], env, tmp_path)
    assert result.returncode == 2
    assert "output_dir" in result.stderr

    result = run_script(script, ["sft", "output_dir=/shared/run"], env, tmp_path)
    assert result.returncode == 2
    assert "MASTER_ADDR" in result.stderr

    env.update(MASTER_ADDR="node1", MASTER_PORT="29500")
    result = run_script(script, ["sft", "output_dir=/shared/run"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    command = printed_command(result.stdout, "torchrun")
    assert command[:5] == ["torchrun", "--nnodes", "2", "--node_rank", "1"]
    assert flag_value(command, "--master_addr") == "node1"
    assert flag_value(command, "--master_port") == "29500"


# ---- slurm.sbatch

SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "safe-rlhf",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NODELIST": "gpu[03-04]",
    "SLURM_GPUS_ON_NODE": "8",
    "SLURM_CPUS_PER_TASK": "32",
}


def split_srun(command: list[str]) -> tuple[list[str], list[str]]:
    """(srun's own words, the per-node command run by bash -c, split into words)."""
    assert command[0] == "srun"
    assert command[-3:-1] == ["bash", "-c"]
    return command[:-3], shlex.split(command[-1])


def test_slurm_dry_run_prints_srun_torchrun_and_requeue_commands(stubs, stub_log, tmp_path):
    env = script_env(stubs, stub_log, DRY_RUN="1", **SLURM_ENV)
    result = run_script(LAUNCH_DIR / "slurm.sbatch", ["sft", *OVERRIDES], env, tmp_path)
    assert result.returncode == 0, result.stderr

    srun, per_node = split_srun(printed_command(result.stdout, "srun"))
    assert srun == [
        "srun", "--nodes", "2", "--ntasks", "2", "--ntasks-per-node", "1", "--kill-on-bad-exit=1",
        "--cpus-per-task", "32",
    ]  # fmt: skip
    # The port comes from the job id (20000 + 4242), so every node and every requeue agrees on it.
    assert per_node == [
        "exec", "torchrun", "--nnodes", "2", "--node_rank", "$SLURM_NODEID", "--nproc_per_node", "8",
        "--master_addr", "gpu03", "--master_port", "24242",
        "-m", "safe_rlhf.train", "--config-name", "sft", *OVERRIDES,
        "output_dir=runs/safe-rlhf-4242", "train.resume=auto",
    ]  # fmt: skip
    assert printed_command(result.stdout, "scontrol") == ["scontrol", "requeue", "4242"]
    assert_dry_run_started_nothing(stub_log, tmp_path / "runs")


def test_slurm_dry_run_takes_nodes_and_output_dir_from_the_user(stubs, stub_log, tmp_path):
    env = script_env(stubs, stub_log, DRY_RUN="1", SAFE_RLHF_NODES="alpha beta", **SLURM_ENV)
    output_dir = tmp_path / "run"
    result = run_script(LAUNCH_DIR / "slurm.sbatch", ["sft", f"output_dir={output_dir}"], env, tmp_path)
    assert result.returncode == 0, result.stderr

    _, per_node = split_srun(printed_command(result.stdout, "srun"))
    assert flag_value(per_node, "--master_addr") == "alpha"
    assert per_node[-2:] == [f"output_dir={output_dir}", "train.resume=auto"]
    assert_dry_run_started_nothing(stub_log, output_dir)


@pytest.mark.parametrize(("restart_count", "resumes_auto"), [("0", False), ("1", True)])
def test_slurm_honours_a_user_resume_on_the_first_start_only(stubs, stub_log, tmp_path, restart_count, resumes_auto):
    env = script_env(stubs, stub_log, DRY_RUN="1", SLURM_RESTART_COUNT=restart_count, **SLURM_ENV)
    result = run_script(LAUNCH_DIR / "slurm.sbatch", ["sft", "train.resume=ckpt/step-10"], env, tmp_path)
    _, per_node = split_srun(printed_command(result.stdout, "srun"))
    assert "train.resume=ckpt/step-10" in per_node
    # hydra applies overrides in order: the later train.resume=auto wins
    assert (per_node[-1] == "train.resume=auto") is resumes_auto


def test_slurm_outside_a_job_refuses_to_run(stubs, stub_log, tmp_path):
    result = run_script(LAUNCH_DIR / "slurm.sbatch", ["sft"], script_env(stubs, stub_log), tmp_path)
    assert result.returncode == 2
    assert "SLURM_JOB_ID" in result.stderr
    assert calls(stub_log) == []


@pytest.mark.parametrize(("status", "requeued"), [(75, True), (0, False), (1, False)])
def test_slurm_requeues_the_job_when_the_training_exits_75(stubs, stub_log, tmp_path, status, requeued):
    output_dir = tmp_path / "run"
    env = script_env(
        stubs, stub_log, SAFE_RLHF_NODES="gpu03 gpu04", STUB_STATUS=str(status), STUB_SRUN_RUNS_TASK="1", **SLURM_ENV
    )
    args = ["sft", "optim.lr=1e-5", SPACED_OVERRIDE, f"output_dir={output_dir}"]
    result = run_script(LAUNCH_DIR / "slurm.sbatch", args, env, tmp_path)

    assert result.returncode == status, result.stdout + result.stderr
    recorded = calls(stub_log)
    assert [call["name"] for call in recorded[:2]] == ["srun", "torchrun"]
    # bash -c on the node turned the per-node command into these torchrun arguments
    assert recorded[1]["argv"] == [
        "--nnodes", "2", "--node_rank", "0", "--nproc_per_node", "8",
        "--master_addr", "gpu03", "--master_port", "24242",
        "-m", "safe_rlhf.train", "--config-name", "sft",
        "optim.lr=1e-5", SPACED_OVERRIDE, f"output_dir={output_dir}", "train.resume=auto",
    ]  # fmt: skip
    requeues = [call["argv"] for call in recorded if call["name"] == "scontrol"]
    assert requeues == ([["requeue", "4242"]] if requeued else [])

    log = (output_dir / "launch.log").read_text()
    assert "stub torchrun stdout" in log
    assert "stub torchrun stderr" in log
    assert f"training exited with status {status}" in log
    assert "bash -c" in (output_dir / "launch_command.sh").read_text()


def test_slurm_forwards_the_time_limit_warning_and_requeues(stubs, stub_log, tmp_path):
    """SIGUSR1 to the batch shell reaches the srun step as SIGTERM; torchrun then exits non-zero (not 75)."""
    output_dir = tmp_path / "run"
    env = script_env(stubs, stub_log, SAFE_RLHF_NODES="gpu03", STUB_SLEEP="30", STUB_SIGNAL_STATUS="1", **SLURM_ENV)
    process = subprocess.Popen(
        ["bash", str(LAUNCH_DIR / "slurm.sbatch"), "sft", f"output_dir={output_dir}"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not any(call["name"] == "srun" for call in calls(stub_log)):
            assert time.monotonic() < deadline, "the srun stub never started"
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.05)
        process.send_signal(signal.SIGUSR1)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 1, output
    events = [(call["name"], call["event"]) for call in calls(stub_log)]
    assert ("srun", "signal SIGTERM") in events
    assert [call["argv"] for call in calls(stub_log) if call["name"] == "scontrol"] == [["requeue", "4242"]]
    assert "got SIGUSR1" in (output_dir / "launch.log").read_text()


# ---- conf/hydra/launcher/slurm.yaml

LAUNCHER_CONFIG = REPO_ROOT / "conf" / "hydra" / "launcher" / "slurm.yaml"
# The fields of SlurmQueueConf in hydra-submitit-launcher 1.2 (the plugin's config.py).
SUBMITIT_SLURM_FIELDS = {
    "_target_", "submitit_folder", "timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb",
    "nodes", "name", "stderr_to_stdout", "partition", "qos", "comment", "constraint", "exclude", "gres",
    "cpus_per_gpu", "gpus_per_task", "mem_per_gpu", "mem_per_cpu", "account", "signal_delay_s", "max_num_timeout",
    "additional_parameters", "array_parallelism", "setup",
}  # fmt: skip


def test_slurm_launcher_config_uses_the_plugins_fields_with_a_comment_above_each():
    import yaml

    text = LAUNCHER_CONFIG.read_text()
    assert text.startswith("# @package hydra.launcher\n")
    values = yaml.safe_load(text)
    assert values.pop("defaults") == ["submitit_slurm", "_self_"]
    assert set(values) <= SUBMITIT_SLURM_FIELDS
    assert values["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert values["tasks_per_node"] == 1  # one process per job: submitit sets no RANK / WORLD_SIZE
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"[A-Za-z_]+:", line) and line != "defaults:":
            assert lines[index - 1].startswith("#"), f"no comment above '{line}'"


def test_slurm_launcher_config_composes_when_the_plugin_is_installed():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from safe_rlhf.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base=None):
        composed = compose(
            config_name="sft",
            overrides=["hydra/launcher=slurm", "hydra.launcher.timeout_min=30"],
            return_hydra_config=True,
        )
    launcher = composed.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.timeout_min == 30
    assert launcher.signal_delay_s == 120
    assert launcher.gres is None  # a field this file leaves to the plugin's schema
