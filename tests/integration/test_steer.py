"""SteerLM end to end on tiny models: attribute-conditioned SFT, steered generation, labelling by an attribute model."""

from __future__ import annotations

import json
import sys

import pytest

from safe_rlhf.data import load_samples
from safe_rlhf.toyworld.steer_data import ATTRIBUTES
from tests.conftest import run_cli, train_cli
from tests.integration.ppo_helpers import build_score_model

pytestmark = pytest.mark.integration
NAMES = "[" + ",".join(ATTRIBUTES) + "]"


def test_steerlm_sft_generate_and_label(tmp_path, safe_rlhf_cache):
    run_dir = tmp_path / "steerlm"
    result = train_cli([f"output_dir={run_dir}", "logger=none", "data.train=toyworld:steer_sft", "train.max_steps=3",
                        f"data.steer_attributes={NAMES}", "data.max_length=96", "train.eval_steps=0"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steer_attributes:\n  - helpfulness" in (run_dir / "config.yaml").read_text()
    # the exported model records what it was trained with, so requests are checked and ordered against it
    assert json.loads((run_dir / "model" / "steer.json").read_text()) == {"steer_attributes": list(ATTRIBUTES)}

    request = "helpfulness=4,correctness=4,coherence=4,complexity=4,verbosity=0"
    model = str(run_dir / "model")
    generate = [sys.executable, "-m", "safe_rlhf.steer", "generate", "--model", model, "--prompt",
                "how do i fix my slow laptop", "--attributes", request, "--max-new-tokens", "4"]  # fmt: skip
    result = run_cli(generate)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli([*generate[:-4], "--attributes", "verbosity=9"])
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: attribute verbosity=9 is outside 0-4"
    )
    result = run_cli([*generate[:-4], "--attributes", "verbosity=0"])  # the model was trained on five attributes
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: --attributes: ")
    assert "missing helpfulness, correctness, coherence, complexity" in result.stderr

    # An attribute model (five regression outputs) labels data that has no labels, in the HelpSteer schema.
    attribute_model = build_score_model(tmp_path / "attribute_model", "reward", score_dim=5,
                                        attribute_names=list(ATTRIBUTES), objective="regression")  # fmt: skip
    out = tmp_path / "labelled.jsonl"
    result = run_cli([sys.executable, "-m", "safe_rlhf.steer", "label", "--model", str(attribute_model),
                      "--data", "toyworld:sft*0.01", "--out", str(out)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 40 and all(0 <= r[name] <= 4 for r in records for name in ATTRIBUTES)
    samples = load_samples(f"helpsteer:{out}", kind="attribute").samples  # readable as HelpSteer data
    assert samples[0].response == records[0]["response"]
    # A model that is not an attribute model is refused in one line.
    plain = build_score_model(tmp_path / "plain_rm", "reward")
    result = run_cli([sys.executable, "-m", "safe_rlhf.steer", "label", "--model", str(plain), "--data",
                      "toyworld:sft*0.01", "--out", str(tmp_path / "x.jsonl")])  # fmt: skip
    assert result.returncode == 2 and "is not a multi-attribute regression model" in result.stderr
