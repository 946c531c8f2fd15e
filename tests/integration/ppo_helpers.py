"""Tiny stand-ins for the PPO recipes' inputs: a random tiny actor and reward/cost score models built from it."""

from __future__ import annotations

from pathlib import Path


def build_score_model(directory: Path, score_type: str, score_dim: int = 1, **metadata: object) -> Path:
    """A score model on the tiny backbone with a fresh head, saved like the score-model recipes save theirs."""
    from transformers import AutoTokenizer

    from safe_rlhf.assets import resolve_model_path
    from safe_rlhf.score_model import COST_SIGN_CONVENTION, load_score_model, set_score_metadata

    if (directory / "config.json").exists():
        return directory
    model = load_score_model("tiny", score_dim=score_dim, new_head=True)
    set_score_metadata(
        model,
        score_type=score_type,
        score_dim=score_dim,
        sign_convention=COST_SIGN_CONVENTION if score_type == "cost" else "higher is better",
        **metadata,
    )
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model_path("tiny")).save_pretrained(directory)
    return directory


def ppo_overrides(root: Path) -> list[str]:
    reward = build_score_model(root / "reward_model", "reward")
    cost = build_score_model(root / "cost_model", "cost")
    return [
        "actor.name_or_path=tiny",
        f"reward_model={reward}",
        f"cost_model={cost}",
        "logger=none",
        "train.rollout_batch_size=16",
        "train.mini_batch_size=8",
        "train.micro_batch_size=4",
        "generation.max_new_tokens=8",
        "data.eval=null",
        "train.export=false",
    ]


def build_two_path_actor(directory: Path) -> Path:
    """A tiny Llama whose responses either end at once or run to the length limit, each with probability 1/2.

    Attention and MLP outputs are zeroed, so the residual stream at a position is the embedding of its token alone
    and the next-token distribution depends only on the current token. With one-hot embeddings for the prompt's last
    token T and two response tokens A and B, the head is set so that
        after T: A or B (logit 160 each, every other token 0)   after A: EOS   after B: B again
    i.e. a response is "A EOS" (2 tokens) or "B B B ..." up to max_new_tokens. With one prompt per rank, the ranks
    then stop generating at different steps in about half of the iterations, which is what ZeRO-3 generation must
    survive (collectives inside a forward would no longer match)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safe_rlhf.assets import resolve_model_path
    from safe_rlhf.data import load_samples, tokenize_prompt

    if (directory / "config.json").exists():
        return directory
    tiny = resolve_model_path("tiny")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    prompts = load_samples("toyworld:prompts", kind="prompt", on_error="raise", seed=0).samples[:64]
    last_tokens = {tokenize_prompt(sample, tokenizer, 48).input_ids[-1] for sample in prompts}
    assert len(last_tokens) == 1, last_tokens  # the chat template ends every prompt with the same token
    (prompt_end,) = last_tokens
    token_a, token_b = 300, 301
    eos = tokenizer.eos_token_id
    assert len({prompt_end, token_a, token_b, eos, tokenizer.pad_token_id}) == 5
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embedding = model.model.embed_tokens.weight
        embedding[:, :3] = 0.0  # dimensions 0-2 belong to T, A and B only
        for dimension, token in enumerate((prompt_end, token_a, token_b)):
            embedding[token] = 0.0
            embedding[token, dimension] = 1.0  # RMSNorm makes this sqrt(64) = 8 in dimension `dimension`
        head = model.lm_head.weight
        head.zero_()
        head[token_a, 0] = head[token_b, 0] = 20.0  # after T: A and B at logit 160
        head[eos, 1] = 20.0  # after A: EOS
        head[token_b, 2] = 20.0  # after B: B
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
