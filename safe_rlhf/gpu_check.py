"""The prepared GPU check: SFT, PPO-Lagrangian and DPO on a random ~0.5B Llama, bf16, ZeRO-3, one GPU.

    make gpu-check                     # python -m safe_rlhf.gpu_check: on a machine with CUDA (under 8 minutes, H200)
    make gpu-check-dry                 # python -m safe_rlhf.gpu_check --dry-run: the same stages on CPU, tiny, fp32

The model is built from a config (no download): Llama, hidden 1024, intermediate 5504, 24 layers, 16 heads, the
offline tokenizer's vocabulary (508M matrix parameters), the same backbone for the reward and cost models. Stages:

1. PPO-Lagrangian: the benchmark's worker (safe_rlhf/bench.py, workload ``gpu-check``): 64 prompts of 64 tokens,
   exactly 128 new tokens each, one warm-up and three timed iterations, all six models on the GPU under ZeRO-3 with
   the weights gathered once per generate; it also measures the matmul rate (this process never touches the GPU).
2. SFT: ``python -m safe_rlhf.train --config-name sft`` on the toy world, ``deepspeed=zero3 deepspeed.precision=bf16``,
   256 sequences per step, 30 steps, lr 1e-4.
3. DPO: ``python -m safe_rlhf.train --config-name dpo`` on the toy world's preference pairs, 128 pairs per step,
   20 steps, the reference model a second frozen engine.

Printed per stage: tokens/s (SFT and DPO: every token the policy reads; PPO: generated tokens per iteration second),
achieved TFLOP/s (PPO: the exact count of safe_rlhf/flops.py per phase; SFT and DPO: 6 N per token for training, plus
2 N for DPO's reference forward, over the tokens that are not padding, attention excluded, which is under 2% at
these lengths: a lower bound, the padded positions are computed too) and its share of a bf16
8192 x 8192 matmul measured in the same run, the generation share of the PPO iteration, peak GPU memory (CUDA's
allocator) against the start-up estimate, and each stage's wall time. ``--json`` writes the figures, after every
stage. Each stage must finish by the budget plus a minute (then the check stops with one line).

The dry run builds a 2-layer model and runs every stage for a step or two with ZeRO-3 in fp32 on the CPU, so the
check is known to work before a GPU is lent; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {"workload": "gpu-check", "precision": "bf16", "sft_steps": 30, "sft_batch": 256, "dpo_steps": 20,
            "dpo_batch": 128, "log_steps": 5, "budget_s": 480},
    "dry-run": {"workload": "gpu-check-dry", "precision": "fp32", "sft_steps": 2, "sft_batch": 4, "dpo_steps": 2,
                "dpo_batch": 2, "log_steps": 1, "budget_s": None},
}  # fmt: skip


class CheckError(RuntimeError):
    """A stage failed: the message names it and ends with its output's tail."""


def train_stage(config_name: str, run_dir: Path, overrides: list[str], timeout: float | None) -> float:
    """Run one recipe through the training entry point; its wall time in seconds."""
    command = [sys.executable, "-m", "safe_rlhf.train", "--config-name", config_name, f"output_dir={run_dir}",
               "logger=none", "train.overwrite=true", "train.export=false", *overrides]  # fmt: skip
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckError(f"stage {config_name} did not finish within {timeout:.0f} s: {' '.join(command)}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout)[-3000:]
        raise CheckError(f"stage {config_name} failed (exit {result.returncode}): {' '.join(command)}\n{tail}")
    return time.perf_counter() - start


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def steady_median(rows: list[dict[str, float]], key: str) -> float:
    """Median of a logged rate without its first row (the first steps pay for warm-up and allocation)."""
    values = [row[key] for row in rows if key in row]
    if not values:
        raise CheckError(f"no {key} in the run's metrics.jsonl")
    return statistics.median(values[1:] or values)


def memory_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "memory.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def run_check(root: Path, profile_name: str, json_path: Path | None = None) -> dict[str, Any]:
    """Build the model, run the three stages, and collect their figures (written to ``json_path`` after every stage,
    so a check stopped from outside still leaves what it measured)."""
    import torch

    from safe_rlhf import bench
    from safe_rlhf.flops import model_flops

    profile = PROFILES[profile_name]
    workload = profile["workload"]
    start = time.perf_counter()
    paths = bench.build_workload(root, workload)
    build_s = time.perf_counter() - start
    # Every stage must end by the deadline: a hung collective must not eat a lent machine's whole time.
    deadline = None if profile["budget_s"] is None else start + profile["budget_s"] + 60

    def remaining() -> float | None:
        return None if deadline is None else max(30.0, deadline - time.perf_counter())

    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # sizes only: no weights are allocated
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(paths["policy"]))
    matrix_parameters = model_flops(model).matrix_parameters
    result: dict[str, Any] = {"profile": profile_name, "matrix_parameters": matrix_parameters,
                              "precision": profile["precision"], "build_s": build_s, "stages": {},
                              "budget_s": profile["budget_s"]}  # fmt: skip
    stages: dict[str, dict[str, Any]] = result["stages"]

    def record(name: str, stage: dict[str, Any]) -> None:
        stages[name] = stage
        result["total_s"] = build_s + sum(figures["wall_s"] for figures in stages.values())
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(result, indent=2))

    def policy_stage(steps: int, batch: int) -> list[str]:
        """The overrides SFT and DPO share: the built model, ZeRO-3, the precision, steps, one micro-batch a step; a
        learning rate for a 24-layer random model (the tiny model's 2e-3 could diverge there)."""
        return [f"model.name_or_path={paths['policy']}", "deepspeed=zero3",
                f"deepspeed.precision={profile['precision']}", f"train.log_steps={profile['log_steps']}",
                f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.micro_batch_size={batch}",
                "train.eval_steps=0", "optim.lr=1e-4"]  # fmt: skip

    # 1. PPO-Lagrangian first (the benchmark's worker: exact lengths, so an exact FLOP count per phase); it also
    #    measures the matmul rate on the GPU, so this process never opens a CUDA context of its own.
    start = time.perf_counter()
    ppo = bench.run_setup("zero3-single", root, workload, timeout=remaining())
    result["device"] = ppo["device"]
    result["matmul_flops_per_second"] = ppo["matmul_flops_per_second"]
    peak = ppo["peak_device_memory_mb"]
    record("ppo_lag", {
        "wall_s": time.perf_counter() - start,
        "tokens_per_second": ppo["generated_tokens_per_second"],
        "flops_per_second": ppo["achieved_flops_per_second"]["iteration"],
        "phase_flops_per_second": ppo["achieved_flops_per_second"],
        "generation_share": ppo["generation_s"] / ppo["seconds_per_iteration"],
        "seconds_per_iteration": ppo["seconds_per_iteration"],
        "memory": {"measured_bytes": None if peak is None else peak * 2**20,
                   "reserved_bytes": None if peak is None else ppo["peak_device_reserved_mb"] * 2**20,
                   "estimate_bytes": ppo["memory_estimate_mb"] * 2**20,
                   "measured": "CUDA max_memory_allocated" if peak is not None else "not measured on CPU"},
    })  # fmt: skip

    # 2. SFT
    sft_dir = root / "sft"
    wall = train_stage("sft", sft_dir, [*policy_stage(profile["sft_steps"], profile["sft_batch"]),
                                        "data.eval_fraction=0"], remaining())  # fmt: skip
    tokens_per_second = steady_median(read_metrics(sft_dir), "train/input_tokens_per_second")
    record(
        "sft",
        {
            "wall_s": wall,
            "tokens_per_second": tokens_per_second,
            "flops_per_second": tokens_per_second * 6.0 * matrix_parameters,
            "memory": memory_record(sft_dir),
        },
    )

    # 3. DPO
    dpo_dir = root / "dpo"
    wall = train_stage("dpo", dpo_dir, [*policy_stage(profile["dpo_steps"], profile["dpo_batch"]), "data.eval=null"],
                       remaining())  # fmt: skip
    rows = read_metrics(dpo_dir)
    tokens_per_second = steady_median(rows, "train/input_tokens_per_second")
    record(
        "dpo",
        {
            "wall_s": wall,
            "tokens_per_second": tokens_per_second,
            "pairs_per_second": steady_median(rows, "train/pairs_per_second"),
            "flops_per_second": tokens_per_second * 8.0 * matrix_parameters,
            "memory": memory_record(dpo_dir),
        },
    )
    return result


def print_report(result: dict[str, Any]) -> None:
    rate = result["matmul_flops_per_second"]
    print(f"\ngpu check ({result['profile']}) on {result['device']}: {result['matrix_parameters'] / 1e6:.0f}M matrix "
          f"parameters, {result['precision']}, ZeRO-3; matmul {rate / 1e12:.1f} TFLOP/s")  # fmt: skip
    header = (
        f"{'stage':<9}{'tokens/s':>11}{'TFLOP/s':>9}{'of matmul':>11}{'gen share':>11}{'peak mem':>12}"
        f"{'estimate':>12}{'wall s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in ("sft", "ppo_lag", "dpo"):
        stage = result["stages"][name]
        memory = stage["memory"]
        measured = memory.get("measured_bytes")
        estimate = memory.get("estimate_bytes")
        share = stage.get("generation_share")
        print(
            f"{name:<9}{stage['tokens_per_second']:>11.0f}{stage['flops_per_second'] / 1e12:>9.3g}"
            f"{100 * stage['flops_per_second'] / rate:>10.1f}%{'' if share is None else f'{100 * share:.0f}%':>11}"
            f"{'-' if not measured else f'{measured / 2**30:.2f} GiB':>12}"
            f"{'-' if not estimate else f'{estimate / 2**30:.2f} GiB':>12}{stage['wall_s']:>8.1f}"
        )
    phases = result["stages"]["ppo_lag"]["phase_flops_per_second"]
    print("ppo_lag per phase: " + ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in phases.items()))
    print(f"dpo: {result['stages']['dpo']['pairs_per_second']:.1f} pairs/s")
    budget = result["budget_s"]
    verdict = "" if budget is None else (" (within" if result["total_s"] <= budget else " (OVER") + f" {budget} s)"
    print(f"total {result['total_s']:.0f} s including {result['build_s']:.0f} s building the models{verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model, fp32, on CPU: check that it runs")
    parser.add_argument("--root", type=Path, default=None, help="models and runs (default $SAFE_RLHF_CACHE/gpu-check)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    import torch

    from safe_rlhf.assets import cache_dir

    profile = "dry-run" if args.dry_run else "gpu"
    if profile == "gpu" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; `make gpu-check-dry` runs the same stages on CPU", file=sys.stderr)
        raise SystemExit(2)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = (args.root or cache_dir() / f"gpu-check-{profile}").resolve()
    try:
        result = run_check(root, profile, args.json)
    except (CheckError, RuntimeError) as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print_report(result)


if __name__ == "__main__":
    main()
