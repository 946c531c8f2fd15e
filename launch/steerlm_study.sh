#!/usr/bin/env bash
# SteerLM on the toy world, for one seed: does a requested verbosity change the length and not the helpfulness?
#
#     launch/steerlm_study.sh 1 runs/steerlm-study       # then seeds 2 and 3; about 5 minutes each on 2 cores
#
# 1. SteerLM SFT on toyworld:steer_sft (HelpSteer schema; attributes from the ground truth, verbosity = neutral
#    padding), every prompt conditioned on its own five labels; 12 epochs, twice plain SFT's 6: at 6 the tiny model
#    followed verbosity but lost content (seed 1: helpfulness 0.64 at verbosity 0, 1.23 at 4; 2.46 / 2.26 at 12).
# 2. An attribute model (five-output regression reward model) on the same data; it labels toyworld:sft, which has no
#    labels, and a second SteerLM SFT trains on those labels.
# 3. A cost model (the arena scores cost too), then two arenas per SteerLM model on the held-out prompts, asking for
#    helpfulness, correctness, coherence and complexity 4 with verbosity 0 and with verbosity 4.
# 4. A SteerLM model conditioned on verbosity alone, and its two arenas asking for verbosity 0 and 4 alone.
# Stages whose output exists are skipped, so a killed run continues where it stopped.
set -euo pipefail

SEED=${1:?usage: steerlm_study.sh SEED [OUTPUT_DIR]}
OUT=${2:-runs/steerlm-study}/seed-$SEED
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT/logs"

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

common=(seed="$SEED" logger=none)
names="[helpfulness,correctness,coherence,complexity,verbosity]"
study_stage steerlm "$OUT/steerlm/model/config.json" safe_rlhf.train --config-name sft output_dir="$OUT/steerlm" \
    "${common[@]}" data.train=toyworld:steer_sft data.steer_attributes="$names" data.max_length=96 train.epochs=12
study_stage steerlm_verbosity "$OUT/steerlm_verbosity/model/config.json" safe_rlhf.train --config-name sft \
    output_dir="$OUT/steerlm_verbosity" "${common[@]}" data.train=toyworld:steer_sft data.steer_attributes=[verbosity] \
    data.max_length=96 train.epochs=12
study_stage attribute_model "$OUT/attribute_model/model/config.json" safe_rlhf.train --config-name reward_model \
    output_dir="$OUT/attribute_model" model.name_or_path="$OUT/steerlm/model" "${common[@]}" \
    score.objective=regression score.score_dim=5 score.attribute_names="$names" data.train=toyworld:steer_sft \
    data.eval=toyworld:steer_test data.max_length=64
study_stage label "$OUT/labelled_sft.jsonl" safe_rlhf.steer label --model "$OUT/attribute_model/model" \
    --data toyworld:sft --out "$OUT/labelled_sft.jsonl"
study_stage steerlm_labelled "$OUT/steerlm_labelled/model/config.json" safe_rlhf.train --config-name sft \
    output_dir="$OUT/steerlm_labelled" "${common[@]}" data.train="helpsteer:$OUT/labelled_sft.jsonl" \
    data.steer_attributes="$names" data.max_length=96 train.epochs=12
study_stage cost_model "$OUT/cost_model/model/config.json" safe_rlhf.train --config-name cost_model \
    output_dir="$OUT/cost_model" model.name_or_path="$OUT/steerlm/model" "${common[@]}"
for verbosity in 0 4; do
    request="{helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:$verbosity}"
    study_stage "arena_verbosity$verbosity" "$OUT/arena_verbosity$verbosity/summary.json" safe_rlhf.evaluate \
        --config-name arena output_dir="$OUT/arena_verbosity$verbosity" "+policies.steerlm=$OUT/steerlm/model" \
        "+policies.steerlm_labelled=$OUT/steerlm_labelled/model" baseline=steerlm seed="$SEED" \
        reward_model="$OUT/attribute_model/model" cost_model="$OUT/cost_model/model" \
        ++data.steer_request="$request" data.max_prompt_length=80
done
# The model conditioned on verbosity alone, asked for verbosity alone (the same two values).
for verbosity in 0 4; do
    study_stage "arena_only_verbosity$verbosity" "$OUT/arena_only_verbosity$verbosity/summary.json" safe_rlhf.evaluate \
        --config-name arena output_dir="$OUT/arena_only_verbosity$verbosity" \
        "+policies.steerlm_verbosity=$OUT/steerlm_verbosity/model" baseline=steerlm_verbosity seed="$SEED" \
        reward_model="$OUT/attribute_model/model" cost_model="$OUT/cost_model/model" \
        ++data.steer_request="{verbosity:$verbosity}" data.max_prompt_length=80
done
echo "summaries: $OUT/arena_verbosity{0,4}/summary.json $OUT/arena_only_verbosity{0,4}/summary.json"
