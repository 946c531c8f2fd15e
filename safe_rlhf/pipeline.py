"""The whole Safe RLHF pipeline as one command: every stage is an ordinary ``python -m safe_rlhf.train`` /
``python -m safe_rlhf.evaluate`` run whose command is printed (and saved), so any stage can be rerun or changed.

    python -m safe_rlhf.pipeline                                  # the toy-world demo (what `make demo` runs)
    python -m safe_rlhf.pipeline output_dir=runs/demo2 seed=1
    python -m safe_rlhf.pipeline 'stages=[sft,reward_model]'      # only some stages
    # real models: a launcher prefix and per-stage overrides
    python -m safe_rlhf.pipeline launcher='deepspeed --num_gpus 8 --master_port 29650' \\
        "sft=['model=hf','model.name_or_path=/models/llama-3-8b','deepspeed=zero3']"   # quote items holding '='

Stages (in order): sft, reward_model, cost_model, ppo, ppo_lag, ppo_reward_shaping (once per lambda in
``shaping_lambdas``), arena (all policies on the held-out prompts), length_bias, report. A stage whose output exists
is skipped (``skip_existing``), so an interrupted pipeline continues where it stopped. The results: ``summary.json``
(one entry per policy), ``report.md`` with the plots, under ``output_dir``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from safe_rlhf.config import PipelineConfig

STAGES = ("sft", "reward_model", "cost_model", "ppo", "ppo_lag", "ppo_reward_shaping", "dpo_better", "dpo_safer",
          "safe_dpo", "arena", "swap_control", "length_bias", "report")  # fmt: skip
# Preference optimisation without RL, on the same preference data as the score models: (config, dpo.label).
DPO_STAGES = {"dpo_better": ("dpo", "better"), "dpo_safer": ("dpo", "safer"), "safe_dpo": ("safe_dpo", "better")}


class Pipeline:
    """Runs the stages as subprocesses, each with its printed command; then writes the summary and the report."""

    def __init__(self, config: PipelineConfig, run_dir: str) -> None:
        self.config = config
        self.root = Path(run_dir)
        self.started = time.perf_counter()
        self.commands: list[str] = []

    def _run(self, name: str, module: str, config_name: str, overrides: list[str], done: Path) -> None:
        prefix = shlex.split(self.config.launcher) if self.config.launcher else [sys.executable]
        runner = ["--module", module] if prefix[0].endswith("deepspeed") else ["-m", module]
        if prefix[0].endswith("torchrun"):
            runner = ["-m", module]
        if module == "safe_rlhf.train":
            # A stage that did not finish runs again in its own directory: it continues from its newest checkpoint
            # if it has one, otherwise its partial outputs are cleared (a used run directory is refused otherwise).
            overrides = ["train.resume=auto", "train.overwrite=true", *overrides]
        command = [*prefix, *runner, "--config-name", config_name, *overrides]
        text = " ".join(shlex.quote(part) for part in command)
        self.commands.append(text)
        elapsed = time.perf_counter() - self.started
        if self.config.skip_existing and done.exists():
            print(f"[{elapsed:6.0f}s] {name}: done before ({done}); skipped", flush=True)
            return
        print(f"[{elapsed:6.0f}s] {name}: {text}", flush=True)
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        stage_start = time.perf_counter()
        with open(log, "w") as handle:
            result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            tail = log.read_text().splitlines()[-5:]
            raise RuntimeError(f"stage {name} failed (exit {result.returncode}); log {log}: " + " | ".join(tail))
        self._record_time(name, time.perf_counter() - stage_start)

    def _record_time(self, name: str, seconds: float) -> None:
        """Wall-clock seconds of each stage's subprocess (start-up included), kept across reruns in stage_times.json."""
        path = self.root / "stage_times.json"
        times = json.loads(path.read_text()) if path.exists() else {}
        times[name] = round(seconds, 1)
        path.write_text(json.dumps(times, indent=2))

    def policies(self) -> dict[str, Path]:
        names = {"sft": self.root / "sft" / "model"}
        for stage in ("ppo", "ppo_lag"):
            if stage in self.config.stages:
                names[stage] = self.root / stage / "model"
        if "ppo_reward_shaping" in self.config.stages:
            for value in self.config.shaping_lambdas:
                # No dots in names: hydra would read "shaping_0.1" as a nested key.
                names[f"shaping_{value:g}".replace(".", "p")] = self.root / f"ppo_reward_shaping_{value:g}" / "model"
        for stage in DPO_STAGES:
            if stage in self.config.stages:
                names[stage] = self.root / stage / "model"
        return names

    def run(self) -> None:
        if self.config.seeds:
            self.run_seeds()
            return
        config, root = self.config, self.root
        root.mkdir(parents=True, exist_ok=True)
        stages = set(config.stages)
        sft, reward, cost = root / "sft" / "model", root / "reward_model" / "model", root / "cost_model" / "model"
        common = [f"seed={config.seed}", "logger=none" if config.quiet else "logger=console"]
        if "sft" in stages:
            self._run("sft", "safe_rlhf.train", "sft", [f"output_dir={root / 'sft'}", *common, *config.sft], sft)
        for stage, target in (("reward_model", reward), ("cost_model", cost)):
            if stage in stages:
                overrides = [
                    f"output_dir={root / stage}",
                    f"model.name_or_path={sft}",
                    *common,
                    *getattr(config, stage),
                ]
                self._run(stage, "safe_rlhf.train", stage, overrides, target)
        rl_inputs = [f"actor.name_or_path={sft}", f"reward_model={reward}", f"cost_model={cost}", *common]
        rl_inputs += _unless_set(f"data.validation_fraction={config.validation_fraction}", config.rl)
        for stage in ("ppo", "ppo_lag"):
            if stage in stages:
                overrides = [f"output_dir={root / stage}", *rl_inputs, *config.rl, *getattr(config, stage)]
                held_out = [o.split("=", 1)[1] for o in overrides if o.startswith("data.validation_fraction=")]
                if stage == "ppo_lag" and config.select_steps and held_out and float(held_out[-1]) > 0:
                    overrides[1:1] = _unless_set(f"train.select_steps={config.select_steps}", overrides)
                self._run(stage, "safe_rlhf.train", stage, overrides, root / stage / "model")
        if "ppo_reward_shaping" in stages:
            for value in config.shaping_lambdas:
                out = root / f"ppo_reward_shaping_{value:g}"
                overrides = [f"output_dir={out}", *rl_inputs, *config.rl, f"lagrange.init={value}", *config.shaping]
                self._run(
                    f"ppo_reward_shaping_{value:g}", "safe_rlhf.train", "ppo_reward_shaping", overrides, out / "model"
                )
        for stage, (config_name, label) in DPO_STAGES.items():
            if stage in stages:
                overrides = [f"output_dir={root / stage}", f"model.name_or_path={sft}", f"dpo.label={label}", *common,
                             *config.dpo]  # fmt: skip
                self._run(stage, "safe_rlhf.train", config_name, overrides, root / stage / "model")
        arena = root / "arena"
        if "arena" in stages:
            policies = [f"+policies.{name}={path}" for name, path in self.policies().items()]
            overrides = [f"output_dir={arena}", *policies, "baseline=sft", f"reward_model={reward}",
                         f"cost_model={cost}", f"seed={config.seed}", *config.arena]  # fmt: skip
            self._run("arena", "safe_rlhf.evaluate", "arena", overrides, arena / "summary.json")
        if "swap_control" in stages:
            # The same policies, questions and sampling seeds; only the pictures differ (each swapped for another
            # class's): what changes is what the image did.
            control = root / "swap_control"
            policies = [f"+policies.{name}={path}" for name, path in self.policies().items()]
            overrides = [f"output_dir={control}", *policies, "baseline=sft", f"reward_model={reward}",
                         f"cost_model={cost}", f"seed={config.seed}",
                         *[o for o in config.arena if not o.startswith("data.eval=")],
                         f"data.eval={config.swap_control_data}"]  # fmt: skip
            self._run("swap_control", "safe_rlhf.evaluate", "arena", overrides, control / "summary.json")
            write_swap_control(root)
        if "length_bias" in stages:
            overrides = [f"output_dir={root / 'length_bias'}", f"reward_model={reward}", f"arena_dir={arena}",
                         f"seed={config.seed}"]  # fmt: skip
            self._run(
                "length_bias", "safe_rlhf.evaluate", "length_bias", overrides, root / "length_bias" / "summary.json"
            )
        (root / "commands.sh").write_text("#!/usr/bin/env bash\nset -e\n" + "\n".join(self.commands) + "\n")
        if "report" in stages:
            report = write_pipeline_report(root, self.policies(), config)
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed:6.0f}s] report: {report}", flush=True)
            print(f"[{elapsed:6.0f}s] summary: {root / 'summary.json'}", flush=True)

    def run_seeds(self) -> None:
        """The pipeline once per seed (output_dir/seed-S, each resumable on its own), then the summary over seeds."""
        import dataclasses

        for seed in self.config.seeds:
            single = dataclasses.replace(self.config, seed=seed, seeds=[])
            print(f"===== seed {seed} =====", flush=True)
            Pipeline(single, str(self.root / f"seed-{seed}")).run()
        if "report" in self.config.stages:
            report = write_seeds_report(self.root, self.config)
            print(f"report over seeds {list(self.config.seeds)}: {report}", flush=True)


def write_seeds_report(root: Path, config: PipelineConfig) -> Path:
    """seeds_summary.json (policy -> mean/std/min/max per metric over seeds), the per-seed table, a
    helpfulness-vs-harm plot of every policy and seed, and seeds_report.md."""
    from safe_rlhf.analysis import ReportSection, write_report
    from safe_rlhf.analysis.plots import plot_helpfulness_vs_harm
    from safe_rlhf.analysis.seeds import aggregate_over_seeds, helpfulness_harm_points, seeds_table

    per_seed = {seed: json.loads((root / f"seed-{seed}" / "summary.json").read_text()) for seed in config.seeds}
    aggregate = aggregate_over_seeds(per_seed)
    (root / "seeds_summary.json").write_text(json.dumps({"seeds": list(config.seeds), "policies": aggregate}, indent=2))
    keys = ("true_helpfulness", "true_harm_rate", "unsafe_rate", "reward", "mean_length", "train_seconds")
    per_seed_rows = [
        {"seed": seed, "policy": policy, **{key: values.get(key) for key in keys}}
        for seed, summary in per_seed.items()
        for policy, values in summary.items()
    ]
    images = []
    points = helpfulness_harm_points(per_seed)
    if points:
        images.append(plot_helpfulness_vs_harm(points, root / "plots" / "helpfulness_vs_harm.png"))
    sections = [
        ReportSection(
            title=f"Mean and spread over seeds {', '.join(map(str, config.seeds))}",
            text=(
                "Held-out prompts, judged by the toy world's ground truth (true_*); mean +- sample standard "
                f"deviation over seeds. PPO-Lag budget: unsafe rate <= {config.threshold}."
            ),
            table=seeds_table(aggregate, keys),
            images=images,
        ),
        ReportSection(title="Per seed", table=per_seed_rows),
    ]
    swaps = {seed: root / f"seed-{seed}" / "swap_control.json" for seed in config.seeds}
    if all(path.exists() for path in swaps.values()):  # the multimodal pipeline: the image-swap control over seeds
        swap_keys = ("answers_changed", "follows_picture", "harm_rate_risky", "harm_rate_benign",
                     "swapped_harm_rate_risky", "swapped_harm_rate_benign")  # fmt: skip
        swap_aggregate = aggregate_over_seeds({s: json.loads(p.read_text()) for s, p in swaps.items()}, swap_keys)
        sections.append(ReportSection(
            title="Image-swap control over seeds",
            text=("Each held-out picture swapped for another class's (same questions and sampling seeds); "
                  "follows_picture: true helpfulness of the answers to the swapped pictures judged on the picture "
                  "shown minus judged on the picture it replaced (about 0 for a policy blind to the image)."),
            table=seeds_table(swap_aggregate, swap_keys),
        ))  # fmt: skip
    report = write_report(root, "Safe RLHF pipeline over seeds", sections)
    return report.rename(root / "seeds_report.md")


def pipeline_summary(arena_summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One entry per policy with the keys the demo promises (true_* only when ground truth exists)."""
    result = {}
    for name, values in arena_summary["policies"].items():
        result[name] = {
            "true_helpfulness": values.get("true_helpfulness"),
            "true_harm_rate": values.get("true_harm_rate"),
            "true_harm_rate_risky": values.get("true_harm_rate_risky"),
            "harm_rate_by_severity": values.get("harm_rate_by_severity"),
            "reward": values.get("mean_reward"),
            "cost": values.get("mean_cost"),
            "unsafe_rate": values.get("harmful_rate"),
            "mean_length": values.get("mean_length"),
        }
    return result


def write_swap_control(root: Path) -> Path:
    """``swap_control.json``: the arena's answers against the swap control's, per policy (analysis.swap_control)."""
    from safe_rlhf.analysis import read_records
    from safe_rlhf.analysis.swap_control import swap_control_summary

    summary = swap_control_summary(
        read_records(root / "arena" / "responses.jsonl"), read_records(root / "swap_control" / "responses.jsonl")
    )
    path = root / "swap_control.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def write_pipeline_report(root: Path, policies: dict[str, Path], config: PipelineConfig) -> Path:
    from safe_rlhf.analysis import ReportSection, summary_table, write_report
    from safe_rlhf.analysis.plots import plot_training_curves

    arena_summary = json.loads((root / "arena" / "summary.json").read_text())
    summary = pipeline_summary(arena_summary)
    times_path = root / "stage_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    for name, model_dir in policies.items():
        if name in summary:
            # wall-clock of the stage that trained this policy (its directory's name is the stage's name)
            summary[name]["train_seconds"] = times.get(model_dir.parent.name)
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    plots = root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    curves = []
    keys = ["train/reward", "train/cost", "train/unsafe_rate", "train/lambda_0", "train/cost_window_mean_0", "train/kl",
            "train/response_length"]  # fmt: skip
    # Preference optimisation has no rollouts: its curves are the pair loss and the implicit-reward accuracy/margin.
    dpo_keys = ["train/loss", "train/reward_accuracy", "train/reward_margin", "eval/reward_accuracy"]
    for name, model_dir in policies.items():
        metrics = model_dir.parent / "metrics.jsonl"
        if name != "sft" and metrics.exists():
            threshold = config.threshold if name == "ppo_lag" else None
            curves.append(
                plot_training_curves(
                    metrics,
                    plots / f"curves_{name}.png",
                    keys=dpo_keys if name in DPO_STAGES else keys,
                    threshold=threshold,
                    threshold_keys=["train/cost_window_mean_0"],  # the constrained quantity (J_C in the multiplier)
                )
            )
    table_keys = [
        "true_helpfulness", "true_harm_rate", "true_harm_rate_risky", "harm_rate_by_severity.1",
        "harm_rate_by_severity.2", "harm_rate_by_severity.3", "reward", "cost", "unsafe_rate", "mean_length",
        "train_seconds",
    ]  # fmt: skip
    arena_images = sorted((root / "arena" / "plots").glob("*.png"))
    sections = [
        ReportSection(
            title="Policies on held-out prompts",
            text=(
                "Every policy answered the same held-out prompts; reward and cost are the trained models' scores, "
                "true_* come from the toy world's ground-truth judges (harm rates are shares of all prompts; "
                "_risky only over risky prompts). Cost > 0 means unsafe."
            ),
            table=summary_table(summary, table_keys),
            images=arena_images,
        ),
        ReportSection(
            title="Training curves", text="Reward, cost, lambda against its threshold, KL, length.", images=curves
        ),
    ]
    swap_control = root / "swap_control.json"
    if swap_control.exists():
        rows = [{"policy": name, **values} for name, values in json.loads(swap_control.read_text()).items()]
        text = (
            "The same held-out questions with each picture swapped for another class's (same sampling seeds): the "
            "share of answers that changed, and the true harm rate under risky and benign pictures, original and "
            "swapped. A policy that reads the image changes its answers and its harm follows the picture."
        )
        sections.append(ReportSection(title="Image-swap control", text=text, table=rows))
    length_bias = root / "length_bias" / "summary.json"
    if length_bias.exists():
        data = json.loads(length_bias.read_text())
        rows = [{"policy": name, **values} for name, values in data.get("gain_decomposition", {}).items()]
        text = (
            f"Reward-length correlation on preference data: {data.get('preference_correlation', float('nan')):.3f}; "
            f"on policy outputs: {data.get('policy_correlation', float('nan')):.3f}. "
            f"Labels prefer the longer response in {data.get('labels_prefer_longer', float('nan')):.3f} of pairs."
        )
        images = sorted((root / "length_bias").glob("*.png"))
        sections.append(ReportSection(title="Length bias", text=text, table=rows or None, images=images))
    commands = (root / "commands.sh").read_text().splitlines()[2:]
    sections.append(ReportSection(title="Commands", text="\n\n".join(f"`{c}`" for c in commands)))
    return write_report(root, "Safe RLHF pipeline", sections)


def main() -> None:
    if not any(arg.startswith("--config-name") or arg == "-cn" for arg in sys.argv[1:]):
        sys.argv[1:1] = ["--config-name", "pipeline"]
    from safe_rlhf.train import main as train_main

    train_main()


if __name__ == "__main__":
    main()


def _unless_set(override: str, overrides: list[str]) -> list[str]:
    """``[override]``, or ``[]`` when ``overrides`` already set its key (a user's list wins; hydra refuses a key
    given twice)."""
    key = override.split("=", 1)[0]
    return [] if any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides) else [override]
