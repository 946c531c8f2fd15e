#!/usr/bin/env bash
# The system-message study (Janus / Multifaceted Collection) on the toy world, for one seed:
#
#     launch/system_message_study.sh 1 runs/system-study      # then seeds 2 and 3; about 15 minutes each on 2 cores
#
# 1. SFT on varied system messages (toyworld:system_sft) and, as the baseline, on the same prompts and outputs under
#    one generic system message (toyworld:system_sft_generic).
# 2. A reward model on the Multifaceted DPO pairs (toyworld:system_preference), a cost model on the PKU-SafeRLHF
#    pairs (toyworld:preference), both from the varied SFT model.
# 3. PPO-Lag from the varied SFT model on RL prompts with system messages (authority claims among them): once with
#    the budget pooled over all prompts, once also per group (the authority-claiming prompts); DPO on the
#    system-message pairs.
# 4. Three arenas over the same policies: unseen system messages (toyworld:system_eval, held-out combinations),
#    no system message (toyworld:eval_prompts) and authority claims on exactly those prompts
#    (toyworld:system_eval_authority).
# Stages whose model (or summary) exists are skipped, so a killed run continues where it stopped.
set -euo pipefail

SEED=${1:?usage: system_message_study.sh SEED [OUTPUT_DIR]}
OUT=${2:-runs/system-study}/seed-$SEED
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT/logs"

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

common=(seed="$SEED" logger=none)
for variant in varied generic; do
    data=toyworld:system_sft
    [ "$variant" = generic ] && data=toyworld:system_sft_generic
    study_stage "sft_$variant" "$OUT/sft_$variant/model/config.json" safe_rlhf.train --config-name sft \
        output_dir="$OUT/sft_$variant" "${common[@]}" data.train="$data" data.max_length=96
done
SFT=$OUT/sft_varied/model
study_stage reward_model "$OUT/reward_model/model/config.json" safe_rlhf.train --config-name reward_model \
    output_dir="$OUT/reward_model" model.name_or_path="$SFT" "${common[@]}" \
    data.train=toyworld:system_preference data.eval=null data.eval_fraction=0.05 data.max_length=96
study_stage cost_model "$OUT/cost_model/model/config.json" safe_rlhf.train --config-name cost_model \
    output_dir="$OUT/cost_model" model.name_or_path="$SFT" "${common[@]}"
rl=(actor.name_or_path="$SFT" reward_model="$OUT/reward_model/model" cost_model="$OUT/cost_model/model"
    data.train=toyworld:system_prompts data.eval=toyworld:system_eval data.max_prompt_length=64
    data.validation_fraction=0.1 train.select_steps=10)
# PPO-Lag with the budget over all prompts pooled, and with a second constraint, the same budget on the prompts whose
# system message claims authority (lagrange.prompt_groups): E[unsafe | authority claim] <= 0.05 as well.
study_stage ppo_lag_pooled "$OUT/ppo_lag_pooled/model/config.json" safe_rlhf.train --config-name ppo_lag \
    output_dir="$OUT/ppo_lag_pooled" "${common[@]}" "${rl[@]}"
study_stage ppo_lag "$OUT/ppo_lag/model/config.json" safe_rlhf.train --config-name ppo_lag \
    output_dir="$OUT/ppo_lag" "${common[@]}" "${rl[@]}" 'lagrange.thresholds=[0.05,0.05]' \
    'lagrange.constraint_types=[rate,rate]' 'lagrange.cost_indices=[0,0]' \
    'lagrange.prompt_groups=[null,"system_kind=authority"]'
study_stage dpo "$OUT/dpo/model/config.json" safe_rlhf.train --config-name dpo \
    output_dir="$OUT/dpo" model.name_or_path="$SFT" "${common[@]}" \
    data.train=toyworld:system_preference data.eval=null data.eval_fraction=0.05 data.max_length=96

policies=(+policies.sft_generic="$OUT/sft_generic/model" +policies.sft_varied="$SFT"
          +policies.ppo_lag_pooled="$OUT/ppo_lag_pooled/model" +policies.ppo_lag="$OUT/ppo_lag/model"
          +policies.dpo="$OUT/dpo/model")
for eval_set in system_eval eval_prompts system_eval_authority; do
    study_stage "arena_$eval_set" "$OUT/arena_$eval_set/summary.json" safe_rlhf.evaluate --config-name arena \
        output_dir="$OUT/arena_$eval_set" "${policies[@]}" baseline=sft_generic seed="$SEED" \
        reward_model="$OUT/reward_model/model" cost_model="$OUT/cost_model/model" \
        data.eval="toyworld:$eval_set" data.max_prompt_length=64
done
echo "summaries: $OUT/arena_*/summary.json"
