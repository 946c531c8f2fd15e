"""Benchmarks (measured, never asserted): PPO-Lagrangian iterations on two fixed workloads.

    make bench                                   # both workloads, their set-ups, one table each
    python -m safe_rlhf.bench --workloads tiny-ppo --setups zero0     # one workload, one set-up

Workload "compute" (where compute dominates): a Llama of 20.1M matrix parameters (hidden 512, intermediate 1376,
6 layers, 8 heads, the offline tokenizer's vocabulary) for all six models, 32 prompts of 16 tokens, exactly 128 new
tokens per response, otherwise as tiny-ppo; 1 warm-up and 2 timed iterations, the median reported. Each phase's
achieved FLOP/s (safe_rlhf/flops.py's count: generation; scoring = six forwards: reward, cost, actor, reference, two
critics; learning = forward + backward of the actor and both critics) is reported as a share of the matrix-multiply
rate (1024 x 1024 fp32) that every process measures in the same run on the same machine and threads: the machine's
practical limit. Set-ups: zero0 and zero3-gather.

Workload "tiny-ppo":

The workload (see the project's bench-workload reference): byte-level BPE tokenizer with 512 entries trained locally;
Llama hidden 64, intermediate 172, 2 layers, 4 heads, 4 KV heads, max positions 128, fp32, random init, for the
policy, the reference, the reward and cost models and both critics; 16 prompts of exactly 16 tokens per iteration;
exactly 32 new tokens per response (EOS cannot stop generation), temperature 0.7, top_k 0, top_p 1.0; one PPO epoch,
one mini-batch of 16, AdamW. 1 warm-up iteration, then 8 timed iterations, repeated 3 times; the median is reported.
Also the parts that bound an iteration: plain ``generate`` for the batch, and one policy forward+backward on (16, 48).

Set-ups: ``zero0`` (1 process, ZeRO-0), ``zero3-gather`` (2 processes, ZeRO-3, weights gathered once per generate),
``zero3-layerwise`` (2 processes, ZeRO-3, parameters gathered layer by layer for every token). Each set-up gets all
the machine's cores, split evenly over its processes (OMP_NUM_THREADS = cores / processes; override with
BENCH_THREADS_PER_PROCESS). The machine is shared: compare ratios measured in one run, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORKLOADS: dict[str, dict[str, Any]] = {
    "tiny-ppo": {"prompts": 16, "prompt_tokens": 16, "new_tokens": 32, "warmup": 1, "timed": 8, "repeats": 3,
                 "model": {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 172, "num_layers": 2,
                           "num_heads": 4}, "setups": ["zero0", "zero3-gather", "zero3-layerwise"]},
    "compute": {"prompts": 32, "prompt_tokens": 16, "new_tokens": 128, "warmup": 1, "timed": 2, "repeats": 1,
                "model": {"vocab_size": 1024, "hidden_size": 512, "intermediate_size": 1376, "num_layers": 6,
                          "num_heads": 8, "max_positions": 256}, "setups": ["zero0", "zero3-gather"]},
    # The PPO-Lagrangian stage of the GPU check (python -m safe_rlhf.gpu_check): a random Llama of 508M matrix
    # parameters in bf16 under ZeRO-3 on one GPU, and the same stages on a tiny fp32 model for the CPU dry run.
    "gpu-check": {"prompts": 64, "prompt_tokens": 64, "new_tokens": 128, "warmup": 1, "timed": 3, "repeats": 1,
                  "model": {"vocab_size": 1024, "hidden_size": 1024, "intermediate_size": 5504, "num_layers": 24,
                            "num_heads": 16, "max_positions": 512}, "setups": ["zero3-single"],
                  "overrides": ["deepspeed.precision=bf16"], "matmul": {"size": 8192, "dtype": "bfloat16"}},
    "gpu-check-dry": {"prompts": 4, "prompt_tokens": 8, "new_tokens": 8, "warmup": 1, "timed": 1, "repeats": 1,
                      "model": {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 172, "num_layers": 2,
                                "num_heads": 4}, "setups": ["zero3-single"], "matmul": {"size": 256}},
}  # fmt: skip
# What ``make bench`` runs; the gpu-check workloads belong to safe_rlhf.gpu_check.
BENCH_WORKLOADS = ["tiny-ppo", "compute"]
SETUPS: dict[str, dict[str, Any]] = {
    "zero0": {"processes": 1, "overrides": ["deepspeed=zero0"]},
    "zero3-gather": {"processes": 2, "overrides": ["deepspeed=zero3", "generation.gather_weights=true"]},
    "zero3-layerwise": {"processes": 2, "overrides": ["deepspeed=zero3", "generation.gather_weights=false"]},
    "zero3-single": {"processes": 1, "overrides": ["deepspeed=zero3", "generation.gather_weights=true"]},
}


def build_workload(root: Path, workload: str) -> dict[str, Path]:
    """Tokenizer + Llama of the workload's sizes, reward and cost score models on the same backbone, once per cache."""
    from transformers import AutoTokenizer

    from safe_rlhf.assets import build_tiny_assets
    from safe_rlhf.score_model import COST_SIGN_CONVENTION, load_score_model, set_score_metadata

    policy = root / "policy"
    if not (policy / "model.safetensors").exists():
        build_tiny_assets(policy, **WORKLOADS[workload]["model"])
    paths = {"policy": policy}
    for score_type in ("reward", "cost"):
        target = root / f"{score_type}_model"
        if not (target / "config.json").exists():
            model = load_score_model(str(policy), score_dim=1, new_head=True)
            convention = COST_SIGN_CONVENTION if score_type == "cost" else "higher is better"
            set_score_metadata(model, score_type=score_type, score_dim=1, sign_convention=convention)
            model.save_pretrained(target, safe_serialization=True)
            AutoTokenizer.from_pretrained(policy).save_pretrained(target)
        paths[score_type] = target
    return paths


def fixed_prompts(tokenizer: Any, count: int, length: int, seed: int = 0) -> list[Any]:
    """``count`` prompts of exactly ``length`` ordinary tokens (no specials, no template)."""
    import torch

    from safe_rlhf.data import TokenizedPrompt

    generator = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    picks = torch.randint(len(ordinary), (count, length), generator=generator)
    return [TokenizedPrompt(input_ids=ordinary[row].tolist(), meta={}) for row in picks]


def worker(setup: str, root: Path, workload: str = "tiny-ppo") -> None:
    """Runs inside each rank: build the recipe on the workload, time iterations and parts, print JSON on rank 0."""
    import torch

    spec = WORKLOADS[workload]
    prompts, prompt_tokens, new_tokens = spec["prompts"], spec["prompt_tokens"], spec["new_tokens"]
    warmup, timed, repeats_count = spec["warmup"], spec["timed"], spec["repeats"]

    from safe_rlhf import distributed
    from safe_rlhf.recipes.common import BatchSchedule
    from safe_rlhf.recipes.ppo import PPORecipe
    from safe_rlhf.train import load_config

    overrides = [
        f"actor.name_or_path={root / 'policy'}",
        f"reward_model={root / 'reward_model'}",
        f"cost_model={root / 'cost_model'}",
        f"output_dir={root / ('run-' + setup)}",
        "logger=none",
        "data.eval=null",
        f"train.rollout_batch_size={prompts}",
        f"train.mini_batch_size={prompts}",
        f"train.micro_batch_size={prompts // int(os.environ.get('WORLD_SIZE', '1'))}",
        "ppo.ppo_epochs=1",
        f"generation.max_new_tokens={new_tokens}",
        f"generation.min_new_tokens={new_tokens}",
        "generation.temperature=0.7",
        "generation.top_k=0",
        "generation.top_p=1.0",
        "train.export=false",
        "train.overwrite=true",  # the same run directory every time the benchmark runs
        *SETUPS[setup]["overrides"],
        *spec.get("overrides", []),
    ]
    config = load_config("ppo_lag", overrides)
    recipe = PPORecipe(config, str(root / f"run-{setup}"))
    try:
        recipe.setup()
        recipe.prompt_items = fixed_prompts(recipe.tokenizer, prompts * 64, prompt_tokens)
        recipe.schedule = BatchSchedule(
            num_samples=len(recipe.prompt_items),
            batch_size=prompts,
            micro_batch_size=config.train.micro_batch_size,
            world_size=distributed.world_size(),
            rank=distributed.rank(),
            seed=config.seed,
        )
        repeats = []
        for _ in range(warmup):
            recipe.iteration()
            recipe.step += 1
        for _ in range(repeats_count):
            phases: dict[str, list[float]] = {"generation": [], "scoring": [], "learning": [], "iteration": []}
            for _ in range(timed):
                distributed.barrier()
                start = time.perf_counter()
                _, _, _, timings = recipe.iteration()
                distributed.barrier()
                phases["iteration"].append(time.perf_counter() - start)
                for key in ("generation", "scoring", "learning"):
                    phases[key].append(timings[key])
                recipe.step += 1
            repeats.append({key: statistics.mean(values) for key, values in phases.items()})
        # The parts: plain generate for the batch, one policy forward+backward on (16, 48).
        from safe_rlhf.data import collate_prompts
        from safe_rlhf.recipes.common import to_device
        from safe_rlhf.recipes.rollout import policy_log_probs, sample_responses

        share = prompts // distributed.world_size()
        device = distributed.device()
        batch = to_device(collate_prompts(recipe.prompt_items[:share], recipe.tokenizer.pad_token_id), device)
        generate_times, backward_times = [], []
        actor = recipe.engines["actor"]
        for _ in range(repeats_count):
            distributed.barrier()
            start = time.perf_counter()
            sample_responses(
                actor,
                batch["input_ids"],
                batch["attention_mask"],
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                temperature=0.7,
                top_p=1.0,
                top_k=0,
                eos_token_id=recipe.tokenizer.eos_token_id,
                pad_token_id=recipe.tokenizer.pad_token_id,
                zero_stage=config.deepspeed.zero_stage,
                gather=config.generation.gather_weights,
                world_size=distributed.world_size(),
            )
            distributed.synchronize()
            generate_times.append(time.perf_counter() - start)
            tokens = torch.randint(3, 500, (share, prompt_tokens + new_tokens), device=device)
            mask = torch.ones_like(tokens)
            actor.train()
            distributed.barrier()
            start = time.perf_counter()
            loss = -policy_log_probs(actor, tokens, mask, 1.0).mean()
            actor.backward(loss)
            distributed.synchronize()
            backward_times.append(time.perf_counter() - start)
            actor.optimizer.zero_grad()
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peaks = distributed.all_gather_cat(torch.tensor([peak_rss_mb]))
        # CUDA's allocator peak over the whole worker (models, optimizer states, rollouts, the parts above).
        peak_device_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        reserved_device_mb = torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else None
        estimate_mb = sum(e.device_total for e in recipe.memory_estimates) / 2**20  # the recipe's start-up estimate
        # The machine's practical limit: every process's matmul rate, measured now, on its own device and threads,
        # in the workload's compute precision, summed.
        from safe_rlhf.flops import matmul_rate

        matmul = spec.get("matmul", {})
        dtype = getattr(torch, matmul.get("dtype", "float32"))
        rate = matmul_rate(size=matmul.get("size", 1024), dtype=dtype, device=device)
        distributed.barrier()
        machine_rate = float(distributed.all_gather_cat(torch.tensor([rate], dtype=torch.float64)).sum())
        phase_flops = iteration_flops(recipe, prompts, prompt_tokens, new_tokens)
        if distributed.is_main_process():
            median = {key: statistics.median(r[key] for r in repeats) for key in repeats[0]}
            achieved = {phase: phase_flops[phase] / median[phase] for phase in phase_flops}
            result = {
                "workload": workload,
                "setup": setup,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "processes": distributed.world_size(),
                "seconds_per_iteration": median["iteration"],
                "generation_s": median["generation"],
                "scoring_s": median["scoring"],
                "learning_s": median["learning"],
                "generated_tokens_per_second": prompts * new_tokens / median["iteration"],
                "plain_generate_s": statistics.median(generate_times),
                "forward_backward_s": statistics.median(backward_times),
                "peak_rss_mb_per_process": float(peaks.max()),
                "peak_device_memory_mb": peak_device_mb,
                "peak_device_reserved_mb": reserved_device_mb,
                "memory_estimate_mb": estimate_mb,
                "matmul_flops_per_second": machine_rate,
                "flops": phase_flops,
                "achieved_flops_per_second": achieved,
                "share_of_matmul_rate": {phase: rate / machine_rate for phase, rate in achieved.items()},
                "repeats": repeats,
            }
            print("BENCH-RESULT " + json.dumps(result), flush=True)
    finally:
        distributed.shutdown(*recipe.engines.values())


def iteration_flops(recipe: Any, prompts: int, prompt_tokens: int, new_tokens: int) -> dict[str, float]:
    """FLOPs of one iteration's phases over all ranks (safe_rlhf/flops.py): every response has exactly new_tokens
    tokens, so every sequence is prompt_tokens + new_tokens long."""
    from safe_rlhf.flops import forward_flops, generation_flops, model_flops, training_flops

    length = prompt_tokens + new_tokens
    actor = model_flops(recipe.engines["actor"])
    critic = model_flops(recipe.engines["reward_critic"])  # the score models have the same backbone and one head
    generation = generation_flops(actor, prompts, prompt_tokens, new_tokens)
    scoring = 2 * forward_flops(actor, prompts, length) + 4 * forward_flops(critic, prompts, length)
    learning = training_flops(actor, prompts, length) + 2 * training_flops(critic, prompts, length)
    return {"generation": generation, "scoring": scoring, "learning": learning,
            "iteration": generation + scoring + learning}  # fmt: skip


def run_setup(setup: str, root: Path, workload: str = "tiny-ppo", timeout: float | None = None) -> dict[str, Any]:
    from safe_rlhf.distributed import find_free_port

    processes = SETUPS[setup]["processes"]
    # Every set-up gets the whole machine: the cores split evenly over its processes (one process ZeRO-0 on all of
    # them, two ranks on half each), whatever OMP_NUM_THREADS the caller exported (make exports 1 for two ranks).
    threads = os.environ.get("BENCH_THREADS_PER_PROCESS") or str(max(1, len(os.sched_getaffinity(0)) // processes))
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    module_args = ["--module", "safe_rlhf.bench", "--worker", setup, "--root", str(root), "--workloads", workload]
    if processes == 1:
        command = [sys.executable, "-m", *module_args[1:]]
    else:
        deepspeed = str(Path(sys.executable).parent / "deepspeed")
        command = [deepspeed, "--num_gpus", str(processes), "--master_port", str(find_free_port()), *module_args]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"benchmark {setup} did not finish within {timeout} s: {' '.join(command)}") from None
    for line in result.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return dict(json.loads(line[len("BENCH-RESULT ") :]))
    tail = (result.stderr or result.stdout)[-2000:]
    raise RuntimeError(f"benchmark {setup} failed (exit {result.returncode}):\n{tail}")


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'setup':<16}{'procs':>6}{'s/iter':>9}{'gen s':>8}{'score s':>9}{'learn s':>9}{'tok/s':>8}"
        f"{'generate s':>12}{'fwd+bwd s':>11}{'peak RSS MB':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['setup']:<16}{r['processes']:>6}{r['seconds_per_iteration']:>9.3f}{r['generation_s']:>8.3f}"
            f"{r['scoring_s']:>9.3f}{r['learning_s']:>9.3f}{r['generated_tokens_per_second']:>8.0f}"
            f"{r['plain_generate_s']:>12.3f}{r['forward_backward_s']:>11.3f}{r['peak_rss_mb_per_process']:>13.0f}"
        )
    base = results[0]["seconds_per_iteration"]
    for r in results[1:]:
        print(
            f"ratio {r['setup']} / {results[0]['setup']}: "
            f"{r['seconds_per_iteration'] / base:.2f}x seconds per iteration"
        )
    print("achieved FLOP/s per phase, and its share of the matmul rate measured in the same run (all processes):")
    for r in results:
        shares = ", ".join(
            f"{phase} {r['achieved_flops_per_second'][phase] / 1e9:.2f} GFLOP/s ({100 * share:.1f}%)"
            for phase, share in r["share_of_matmul_rate"].items()
        )
        print(f"  {r['setup']:<16} matmul {r['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s; {shares}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=BENCH_WORKLOADS, choices=list(WORKLOADS))
    parser.add_argument("--setups", nargs="+", default=None, choices=list(SETUPS), help="default: each workload's")
    parser.add_argument("--root", type=Path, default=None, help="workload cache (default $SAFE_RLHF_CACHE/bench)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from safe_rlhf.assets import cache_dir

    if args.worker:
        worker(args.worker, args.root, args.workloads[0])
        return
    results = []
    for workload in args.workloads:
        root = (args.root or cache_dir() / f"bench-{workload}").resolve()
        build_workload(root, workload)
        setups = args.setups or WORKLOADS[workload]["setups"]
        spec = WORKLOADS[workload]
        print(f"\nworkload {workload}: {spec['prompts']} prompts x ({spec['prompt_tokens']} + {spec['new_tokens']}) "
              f"tokens, model {spec['model']}")  # fmt: skip
        workload_results = [run_setup(setup, root, workload) for setup in setups]
        print_table(workload_results)
        results.extend(workload_results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
