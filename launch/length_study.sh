#!/usr/bin/env bash
# The length-bias interventions of "A Long Way to Go" (Singhal et al. 2023) on the toy world, for one seed:
#
#     launch/length_study.sh 1 runs/length-study       # then seeds 2 and 3; about 15 minutes each on 2 cores
#
# The toy world's ground-truth helpfulness has no length bias (neutral padding scores 0) while its preference labels
# prefer the longer response 20% of the time, so any length a policy gains is bought from the reward model.
# 1. SFT; the reward model three ways: plain, on length-balanced pairs (score.length_balance_bins=10), with random
#    negatives (score.random_negative_fraction=0.5); a cost model (the arena scores cost too).
# 2. Reward-only PPO, the same budget each: plain; higher KL (0.5 instead of 0.2); a length penalty
#    (ppo.length_penalty_coeff=0.05, 0.1 and 0.2); reward scaling (ppo.reward_scaling_clip=1); each reward-model variant;
#    the length-balanced reward model with the 0.05 length penalty; the length-only reward
#    (ppo.length_only_reward_target=12 tokens); a 0.075 and a 0.15 penalty; KL 0.5 with the 0.05 penalty, KL 0.4 with
#    0.05, KL 0.5 with 0.04.
#    RUNS="ppo ppo_length_penalty0.15" (a space-separated subset, in this order) runs only those, with the reward
#    models they need.
# 3. One arena over all of them on the held-out prompts (true helpfulness, lengths), judged by the plain reward model,
#    and the length-bias diagnostics on it (the share of each policy's reward gain that length explains).
# Stages whose model (or summary) exists are skipped, so a killed run continues where it stopped.
set -euo pipefail

SEED=${1:?usage: length_study.sh SEED [OUTPUT_DIR]}
OUT=${2:-runs/length-study}/seed-$SEED
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT/logs"

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

all_runs=(ppo ppo_kl0.5 ppo_length_penalty ppo_length_penalty0.1 ppo_length_penalty0.2 ppo_reward_scaling ppo_length_only
          ppo_rm_balanced ppo_rm_random_negatives ppo_rm_balanced_length_penalty ppo_length_penalty0.075
          ppo_length_penalty0.15 ppo_kl0.5_length_penalty ppo_kl0.4_length_penalty ppo_kl0.5_length_penalty0.04)
select_study_runs length_study.sh "${all_runs[@]}"
runs=("${STUDY_RUNS[@]}")
common=(seed="$SEED" logger=none)
study_stage sft "$OUT/sft/model/config.json" safe_rlhf.train --config-name sft output_dir="$OUT/sft" "${common[@]}"
SFT=$OUT/sft/model
declare -A rm_settings=([reward_model]="" [rm_balanced]="score.length_balance_bins=10"
                        [rm_random_negatives]="score.random_negative_fraction=0.5")
needed_rms=(reward_model)  # the arena and the diagnostics judge with the plain reward model
[[ " ${runs[*]} " == *" ppo_rm_balanced"* ]] && needed_rms+=(rm_balanced)
[[ " ${runs[*]} " == *" ppo_rm_random_negatives "* ]] && needed_rms+=(rm_random_negatives)
for rm in "${needed_rms[@]}"; do
    # shellcheck disable=SC2086  # the setting is one word or none
    study_stage "$rm" "$OUT/$rm/model/config.json" safe_rlhf.train --config-name reward_model output_dir="$OUT/$rm" \
        model.name_or_path="$SFT" "${common[@]}" ${rm_settings[$rm]}
done
study_stage cost_model "$OUT/cost_model/model/config.json" safe_rlhf.train --config-name cost_model \
    output_dir="$OUT/cost_model" model.name_or_path="$SFT" "${common[@]}"

declare -A ppo_settings=([ppo]="" [ppo_kl0.5]="ppo.kl_coeff=0.5" [ppo_length_penalty]="ppo.length_penalty_coeff=0.05"
                         [ppo_length_penalty0.1]="ppo.length_penalty_coeff=0.1"
                         [ppo_length_penalty0.2]="ppo.length_penalty_coeff=0.2"
                         [ppo_reward_scaling]="ppo.reward_scaling_clip=1.0"
                         [ppo_length_only]="ppo.length_only_reward_target=12"
                         [ppo_rm_balanced_length_penalty]="ppo.length_penalty_coeff=0.05"
                         [ppo_length_penalty0.075]="ppo.length_penalty_coeff=0.075"
                         [ppo_length_penalty0.15]="ppo.length_penalty_coeff=0.15"
                         [ppo_kl0.5_length_penalty]="ppo.kl_coeff=0.5 ppo.length_penalty_coeff=0.05"
                         [ppo_kl0.4_length_penalty]="ppo.kl_coeff=0.4 ppo.length_penalty_coeff=0.05"
                         [ppo_kl0.5_length_penalty0.04]="ppo.kl_coeff=0.5 ppo.length_penalty_coeff=0.04")
policies=("+policies.sft=$SFT")
for run in "${runs[@]}"; do
    reward=$OUT/reward_model/model
    case $run in
        ppo_rm_balanced*) reward=$OUT/rm_balanced/model ;;
        ppo_rm_random_negatives) reward=$OUT/rm_random_negatives/model ;;
    esac
    # shellcheck disable=SC2086
    study_stage "$run" "$OUT/$run/model/config.json" safe_rlhf.train --config-name ppo output_dir="$OUT/$run" \
        "${common[@]}" actor.name_or_path="$SFT" reward_model="$reward" cost_model="$OUT/cost_model/model" \
        ${ppo_settings[$run]:-}
    policies+=("+policies.${run//./p}=$OUT/$run/model")  # no dots in a policy name (hydra keys)
done
study_stage arena "$OUT/arena/summary.json" safe_rlhf.evaluate --config-name arena output_dir="$OUT/arena" \
    "${policies[@]}" baseline=sft seed="$SEED" reward_model="$OUT/reward_model/model" \
    cost_model="$OUT/cost_model/model"
study_stage length_bias "$OUT/length_bias/summary.json" safe_rlhf.evaluate --config-name length_bias \
    output_dir="$OUT/length_bias" reward_model="$OUT/reward_model/model" arena_dir="$OUT/arena" seed="$SEED"
echo "summaries: $OUT/arena/summary.json $OUT/length_bias/summary.json"
