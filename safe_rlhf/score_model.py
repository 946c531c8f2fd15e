"""Score models: a Hugging Face causal-LM backbone with a linear head of ``score_dim`` outputs.

Reward models (helpfulness), cost models (harmlessness; **cost > 0 means unsafe, cost <= 0 safe**) and PPO critics are
all this. A score model is saved as an ordinary Hugging Face sequence-classification directory
(``AutoModelForSequenceClassification``: backbone + ``score`` head, safetensors), and its ``config.json`` records what
it is under ``safe_rlhf``::

    {"score_type": "cost", "score_dim": 1, "sign_convention": "cost > 0 means unsafe, cost <= 0 safe",
     "normalizer": {"kind": "running", "mean": [..], "var": [..], "count": N}, "normalize": false,
     "attribute_names": null}

so :func:`load_score_model` followed by :func:`end_scores` reproduces the scores exactly.

The score of a sequence is read at its **last real token** (the last position whose attention mask is 1), both in
training (right-padded pairs) and in RL (left-padded prompt + response), never at padding and never relying on
``pad_token_id`` (which breaks when pad == eos).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

COST_SIGN_CONVENTION = "cost > 0 means unsafe, cost <= 0 safe"


@dataclass
class ScoreNormalizer:
    """Running (Welford) or exponential-moving-average statistics of scores, per output dimension."""

    kind: str = "none"  # "none", "running" or "ema"
    decay: float = 0.99
    mean: list[float] = field(default_factory=list)
    var: list[float] = field(default_factory=list)
    count: int = 0

    def update(self, scores: torch.Tensor) -> None:  # scores (N, K)
        if self.kind == "none" or scores.numel() == 0:
            return
        scores = scores.detach().double().cpu()
        if not self.mean:
            self.mean, self.var = [0.0] * scores.shape[1], [1.0] * scores.shape[1]
        batch_mean = scores.mean(0)
        batch_var = scores.var(0, unbiased=False)
        mean, var = torch.tensor(self.mean, dtype=torch.float64), torch.tensor(self.var, dtype=torch.float64)
        n = scores.shape[0]
        if self.kind == "running":
            total = self.count + n
            delta = batch_mean - mean
            new_mean = mean + delta * n / total
            # Chan et al.'s parallel combination of (count, mean, M2).
            m2 = var * self.count + batch_var * n + delta**2 * self.count * n / total
            new_var = m2 / total
        else:
            weight = self.decay if self.count else 0.0
            new_mean = weight * mean + (1 - weight) * batch_mean
            new_var = weight * var + (1 - weight) * batch_var
        self.mean, self.var, self.count = new_mean.tolist(), new_var.tolist(), self.count + n

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        if self.kind == "none" or not self.mean:
            return scores
        mean = torch.tensor(self.mean, dtype=scores.dtype, device=scores.device)
        std = torch.tensor(self.var, dtype=scores.dtype, device=scores.device).clamp_min(1e-8).sqrt()
        return (scores - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "decay": self.decay, "mean": self.mean, "var": self.var, "count": self.count}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ScoreNormalizer:
        return cls(**values) if values else cls()


def init_score_head(head: torch.nn.Linear) -> None:
    """N(0, 1/sqrt(d + 1)) weights and zero bias (the reference's initialisation), also under ZeRO-3."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(head.parameters()), modifier_rank=0):
        with torch.no_grad():
            head.weight.normal_(0.0, 1.0 / math.sqrt(head.weight.shape[1] + 1))
            if head.bias is not None:
                head.bias.zero_()


def score_head(model: Any) -> torch.nn.Linear:
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear `score` head; use a *ForSequenceClassification model")
    return head


def token_scores(
    model: Any,
    input_ids: torch.Tensor,  # (B, L)
    attention_mask: torch.Tensor,  # (B, L)
    **image_inputs: torch.Tensor,  # a VLM's pixel_values (B, C, H, W) and the like; none for text
) -> torch.Tensor:  # (B, L, K): the head applied at every position (critics use all of them)
    """The ``score`` head's output at every position, from one call of ``model`` itself.

    ``model`` (a DeepSpeed engine or the bare model) is called as a whole, so the engine's forward runs (ZeRO-3
    builds its parameter-prefetch trace there). Hugging Face's sequence-classification forward applies ``score`` to
    every position before it pools one token per row; a forward hook on the head keeps that (B, L, K) output, with
    its autograd graph. The pooled logits are not used (they rely on ``pad_token_id``; see :func:`end_scores`)."""
    head = score_head(model)
    captured: list[torch.Tensor] = []

    def keep_output(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        captured.append(output)

    # Without pad_token_id HF's pooling raises for batches > 1; any id serves it, its result is discarded. (An
    # engine's own `config` is DeepSpeed's dict: the model's is on `engine.module`.)
    config = getattr(model, "module", model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    missing_pad = getattr(config, "pad_token_id", None) is None
    handle = head.register_forward_hook(keep_output)  # after ZeRO-3's own hooks: sees the output it passes on
    try:
        if missing_pad:
            config.pad_token_id = 0
        # Positions count real tokens only, so a left-padded sequence gets the same positions as a right-padded one.
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            **position_kwargs(model, attention_mask),
            **image_inputs,
        )
    finally:
        handle.remove()
        if missing_pad:
            config.pad_token_id = None
    if len(captured) != 1:
        raise RuntimeError(f"the score head ran {len(captured)} times in one forward of {type(model).__name__}")
    return captured[0].float()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L)
    """0, 1, 2, ... over real tokens (padding gets 0): what generation uses for left-padded prompts."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def position_kwargs(model: Any, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"position_ids": ...}`` for a model whose forward takes them; ``{}`` for one that derives positions from the
    attention mask itself (Bloom's ALiBi), which then gets the same left-padding-invariant positions."""
    from safe_rlhf.lora import base_model

    module = base_model(model)  # a DeepSpeed engine's model; under peft's wrapper, which takes **kwargs
    forward = getattr(module, "forward", None)
    key = type(module)
    if key not in _TAKES_POSITION_IDS:
        import inspect

        try:
            _TAKES_POSITION_IDS[key] = "position_ids" in inspect.signature(forward).parameters  # type: ignore[arg-type]
        except (TypeError, ValueError):
            _TAKES_POSITION_IDS[key] = True
    return {"position_ids": position_ids_from_mask(attention_mask)} if _TAKES_POSITION_IDS[key] else {}


_TAKES_POSITION_IDS: dict[type, bool] = {}


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B,)
    """Index of each row's last real token (right or left padding alike); 0 for an all-padding row."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, torch.zeros_like(positions)).amax(dim=1)


def end_scores(
    model: Any,
    input_ids: torch.Tensor,  # (B, L)
    attention_mask: torch.Tensor,  # (B, L)
    **image_inputs: torch.Tensor,  # a VLM's pixel_values; none for text
) -> torch.Tensor:  # (B, K)
    """Raw (unnormalized) scores at each sequence's last real token."""
    scores = token_scores(model, input_ids, attention_mask, **image_inputs)  # (B, L, K)
    index = last_token_index(attention_mask)  # (B,)
    return scores[torch.arange(scores.shape[0], device=scores.device), index]


def score_metadata(model: Any) -> dict[str, Any]:
    return dict(getattr(model.config, "safe_rlhf", None) or {})


def set_score_metadata(model: Any, **values: Any) -> None:
    metadata = score_metadata(model)
    metadata.update(values)
    model.config.safe_rlhf = metadata


HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
"""HelpSteer's and HelpSteer2's five 0-4 attributes, in the datasets' column order."""
HELPSTEER_ATTRIBUTE_WEIGHTS = (0.65, 0.8, 0.45, 0.55, -0.4)
"""The default combination of a HelpSteer-style reward model's outputs into one reward: the weights the HelpSteer2
paper (Wang et al. 2024, arXiv:2406.08673) reports for its Nemotron-4-340B reward model on Reward Bench, as recalled
here (not re-checked against the paper offline). Verbosity counts against: what a reward should not pay for."""


def reward_attribute_weights(metadata: dict[str, Any], configured: list[float], where: str) -> list[float] | None:
    """The weights that combine a multi-output reward model's scores into one reward; None for a one-output model.

    In order: ``configured`` (the recipe's ``reward_attribute_weights``), the weights recorded with the model
    (``score.attribute_weights`` at training), ``HELPSTEER_ATTRIBUTE_WEIGHTS`` when the model's attributes are
    HelpSteer's five. A multi-output model that is not a multi-attribute one (no regression objective, no attribute
    names: a moderation model) keeps output 0 as the reward unless weights are configured. Raises ConfigError (one
    line, naming the key) for a multi-attribute model without weights or on a count mismatch."""
    from safe_rlhf.config import ConfigError

    dim = int(metadata.get("score_dim", 1))
    names = list(metadata.get("attribute_names") or [])
    multi_attribute = metadata.get("objective") == "regression" or bool(names)
    if not configured and (dim == 1 or not multi_attribute):
        # one output, or several that are not attributes (a moderation model): the reward is output 0, as always
        return None
    if configured:
        if len(configured) != dim:
            raise ConfigError(f"reward_attribute_weights has {len(configured)} weights but {where} has {dim} outputs")
        return [float(w) for w in configured]
    if metadata.get("attribute_weights"):
        return [float(w) for w in metadata["attribute_weights"]]
    if tuple(names) == HELPSTEER_ATTRIBUTES:
        return list(HELPSTEER_ATTRIBUTE_WEIGHTS)
    raise ConfigError(
        f"{where} has {dim} outputs ({', '.join(names) or 'unnamed'}) and no attribute weights recorded: set "
        f"reward_attribute_weights=[...] ({dim} numbers)"
    )


def load_score_model(
    path: str,
    *,
    score_dim: int | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    new_head: bool = False,
) -> Any:
    """A score model from a score-model directory, or (``new_head=True``) a fresh head on a causal-LM checkpoint.

    With ``new_head=True`` and a ``score_dim`` different from the checkpoint's head, the head is re-created (a cost
    critic with K outputs started from a one-output cost model keeps its backbone, not its head)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from safe_rlhf.assets import from_pretrained, resolve_model_path

    resolved = resolve_model_path(path)
    config = from_pretrained(AutoConfig, resolved, trust_remote_code=trust_remote_code)  # one line on a bad dir
    if getattr(config, "vision_config", None) is not None:
        from safe_rlhf.vision_models import register_vlm_score_models

        register_vlm_score_models()  # transformers has no score class for most VLMs
    if score_dim is not None:
        config.num_labels = score_dim
    model = AutoModelForSequenceClassification.from_pretrained(
        resolved, config=config, dtype=dtype, trust_remote_code=trust_remote_code, ignore_mismatched_sizes=new_head
    )
    if new_head:
        init_score_head(score_head(model))
    return model


def normalizer_of(model: Any) -> ScoreNormalizer:
    return ScoreNormalizer.from_dict(score_metadata(model).get("normalizer"))


def scores_for_use(model: Any, raw_scores: torch.Tensor) -> torch.Tensor:
    """Raw scores, normalized when the model's metadata says ``normalize: true``."""
    metadata = score_metadata(model)
    if metadata.get("normalize"):
        return normalizer_of(model).normalize(raw_scores)
    return raw_scores
