#!/usr/bin/env bash
# Variants of PPO-Lagrangian against the pipeline's policies of one seed, in one arena (docs/studies.md):
#
#     make demo-seeds                                   # runs/demo-seeds/seed-{1..5}: SFT, models, PPO, PPO-Lag, sweep
#     launch/lagrange_study.sh 1 runs/demo-seeds runs/lagrange-study     # then seeds 2-5; a few minutes per variant
#
# Every variant is PPO-Lag as the pipeline runs it (the same SFT policy, reward and cost models, held-out prompts,
# budget of iterations and checkpoint selection every 10 iterations) with the settings below, spelled out in full so
# that a variant means the same run whatever conf/ppo_lag.yaml ships (today: rate_stream=score, init 0.025, lr 0.25,
# kp 1.25, margin 0.01, i.e. score_margin). "The indicator's gains" are init 0.1, lr 1, kp 5 (the shipped setting
# until 2026-12-04). Every variant but score_margin aims at the budget itself (lagrange.margin=0).
#   indicator_pid    the 0/1 unsafe indicator as the cost critic's stream, with the indicator's gains.
#   critic_fresh     ... and the cost critic starts from a fresh value head (lagrange.critic_head=fresh) instead of the
#                    cost model's, whose scores (about +-10) are not the 0/1 episode cost of a rate constraint.
#   stream_probability  the cost critic and advantage follow the cost model's P(unsafe) = sigmoid(score) instead of
#                    the 0/1 indicator (lagrange.rate_stream=probability), indicator's gains; the multiplier still
#                    tracks the rate.
#   stream_score     ... follow the cost score itself (lagrange.rate_stream=score), on its own +-10 scale, with the
#                    indicator's gains.
#   score_pid10      the score stream with the PID gains and start divided by 10 (init 0.01, lr 0.1, kp 0.5): a
#                    stream about ten times the indicator's scale needs a lambda about ten times smaller.
#   score_pid4       ... divided by 4 (init 0.025, lr 0.25, kp 1.25).
#   score_window64   score_pid4 with a cost window of 64 episodes (one rollout batch) instead of 128.
#   score_ema        score_pid4 with the violation fed to P smoothed by an EMA (lagrange.p_ema_alpha=0.5, CPPOPID).
#   score_margin     score_pid4 aiming at the budget minus 0.01 (lagrange.margin=0.01): room for the sampling noise
#                    of a held-out estimate; checkpoint selection still checks the budget itself. The shipped setting.
# RUNS="critic_fresh" (a space-separated subset) runs only those. The arena then holds SFT, reward-only PPO, the
# pipeline's PPO-Lag, its fixed-lambda sweep (every ppo_reward_shaping_* run found) and the variants, judged by the
# ground truth on the held-out prompts with sampling seed = SEED. Stages whose model (or summary) exists are skipped.
set -euo pipefail

SEED=${1:?usage: lagrange_study.sh SEED [PIPELINE_DIR] [OUTPUT_DIR]}
BASE=${2:-runs/demo-seeds}/seed-$SEED
OUT=${3:-runs/lagrange-study}/seed-$SEED
PYTHON=${PYTHON:-.venv/bin/python}
for needed in sft reward_model cost_model ppo ppo_lag; do
    [ -e "$BASE/$needed/model/config.json" ] || {
        echo "lagrange_study.sh: $BASE/$needed/model is missing; run the pipeline for seed $SEED first" >&2
        exit 2
    }
done
mkdir -p "$OUT/logs"

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

gains1="lagrange.init=0.1 lagrange.lr=1.0 lagrange.kp=5.0"       # the indicator's gains
gains10="lagrange.init=0.01 lagrange.lr=0.1 lagrange.kp=0.5"      # a tenth of them
gains4="lagrange.init=0.025 lagrange.lr=0.25 lagrange.kp=1.25"    # a quarter of them
at_budget="lagrange.margin=0"                                     # aim at the budget itself
declare -A settings=([indicator_pid]="lagrange.rate_stream=indicator $gains1 $at_budget"
                     [critic_fresh]="lagrange.critic_head=fresh lagrange.rate_stream=indicator $gains1 $at_budget"
                     [stream_probability]="lagrange.rate_stream=probability $gains1 $at_budget"
                     [stream_score]="lagrange.rate_stream=score $gains1 $at_budget"
                     [score_pid10]="lagrange.rate_stream=score $gains10 $at_budget"
                     [score_pid4]="lagrange.rate_stream=score $gains4 $at_budget"
                     [score_window64]="lagrange.rate_stream=score $gains4 $at_budget lagrange.window_size=64"
                     [score_ema]="lagrange.rate_stream=score $gains4 $at_budget lagrange.p_ema_alpha=0.5"
                     [score_margin]="lagrange.rate_stream=score $gains4 lagrange.margin=0.01")
all_runs=(indicator_pid critic_fresh stream_probability stream_score score_pid10 score_pid4 score_window64
          score_ema score_margin)
select_study_runs lagrange_study.sh "${all_runs[@]}"
runs=("${STUDY_RUNS[@]}")
models=(actor.name_or_path="$BASE/sft/model" reward_model="$BASE/reward_model/model"
        cost_model="$BASE/cost_model/model" seed="$SEED" logger=none data.validation_fraction=0.1)
policies=("+policies.sft=$BASE/sft/model" "+policies.ppo=$BASE/ppo/model" "+policies.ppo_lag=$BASE/ppo_lag/model")
for shaping in "$BASE"/ppo_reward_shaping_*/model; do
    [ -e "$shaping/config.json" ] || continue
    name=$(basename "$(dirname "$shaping")")
    key=shaping_${name#ppo_reward_shaping_}
    policies+=("+policies.${key//./p}=$shaping")  # no dots in a policy name (hydra keys)
done
for run in "${runs[@]}"; do
    # shellcheck disable=SC2086  # the settings are words
    study_stage "$run" "$OUT/$run/model/config.json" safe_rlhf.train --config-name ppo_lag output_dir="$OUT/$run" \
        "${models[@]}" train.select_steps=10 ${settings[$run]}
    policies+=("+policies.$run=$OUT/$run/model")
done
study_stage arena "$OUT/arena/summary.json" safe_rlhf.evaluate --config-name arena output_dir="$OUT/arena" \
    "${policies[@]}" baseline=sft seed="$SEED" reward_model="$BASE/reward_model/model" \
    cost_model="$BASE/cost_model/model"
echo "arena: $OUT/arena/summary.json"
