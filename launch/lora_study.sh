#!/usr/bin/env bash
# LoRA against full fine-tuning in PPO-Lagrangian on the toy world, for one seed:
#
#     launch/lora_study.sh 1 runs/lora-study        # then seeds 2 and 3; python -m safe_rlhf.analysis.lora_study
#
# 1. SFT, the reward model and the cost model (full fine-tuning, the recipes' defaults).
# 2. PPO-Lag four ways, the same budget and seed: full fine-tuning (the defaults); a LoRA actor (rank 8 on every
#    linear layer) with full critics, at actor_optim.lr=1e-3 and 3e-3 (adapters need a larger step than the full
#    model's 1e-4); LoRA on the actor and both critics (lr 1e-3, critic_optim.lr=2e-3). The LoRA runs use the actor's adapters-off base as the reference policy.
# 3. One arena over SFT and the three on the held-out prompts, judged by the toy world's ground truth.
# Stages whose model (or summary) exists are skipped, so a killed run continues where it stopped.
set -euo pipefail

SEED=${1:?usage: lora_study.sh SEED [OUTPUT_DIR]}
OUT=${2:-runs/lora-study}/seed-$SEED
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT/logs"

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

common=(seed="$SEED" logger=none)
study_stage sft "$OUT/sft/model/config.json" safe_rlhf.train --config-name sft output_dir="$OUT/sft" "${common[@]}"
SFT=$OUT/sft/model
for score in reward_model cost_model; do
    study_stage "$score" "$OUT/$score/model/config.json" safe_rlhf.train --config-name "$score" \
        output_dir="$OUT/$score" model.name_or_path="$SFT" "${common[@]}"
done
declare -A settings=([ppo_lag]=""
                     [ppo_lag_lora]="actor.lora.enabled=true actor_optim.lr=1e-3"
                     [ppo_lag_lora_lr3e-3]="actor.lora.enabled=true actor_optim.lr=3e-3"
                     [ppo_lag_lora_all]="actor.lora.enabled=true actor_optim.lr=1e-3 critic_lora.enabled=true critic_optim.lr=2e-3")
policies=("+policies.sft=$SFT")
for run in ppo_lag ppo_lag_lora ppo_lag_lora_lr3e-3 ppo_lag_lora_all; do
    # shellcheck disable=SC2086  # the settings are words
    study_stage "$run" "$OUT/$run/model/config.json" safe_rlhf.train --config-name ppo_lag output_dir="$OUT/$run" \
        "${common[@]}" actor.name_or_path="$SFT" reward_model="$OUT/reward_model/model" \
        cost_model="$OUT/cost_model/model" ${settings[$run]}
    name=${run//-/_}
    policies+=("+policies.${name//./p}=$OUT/$run/model")  # no dots or dashes in a policy name (hydra keys)
done
study_stage arena "$OUT/arena/summary.json" safe_rlhf.evaluate --config-name arena output_dir="$OUT/arena" \
    "${policies[@]}" baseline=sft seed="$SEED" reward_model="$OUT/reward_model/model" \
    cost_model="$OUT/cost_model/model"
echo "summary: $OUT/arena/summary.json"
