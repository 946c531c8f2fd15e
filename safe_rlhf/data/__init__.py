"""The data layer: dataset readers, the dataset-spec grammar, normalized samples, tokenization and collators.

Typical use in a recipe::

    from safe_rlhf.data import load_samples, TokenizedDataset

    result = load_samples(cfg.data.train, kind="preference", split="train", on_error="skip", seed=cfg.seed)
    dataset = TokenizedDataset(result, tokenizer, max_length=512, on_error="skip")
    loader = DataLoader(dataset, batch_size=16, shuffle=True, collate_fn=dataset.collate)

Specs (``pku-safe-rlhf:/data/pku*0.3+toyworld:preference``) are documented in :mod:`safe_rlhf.data.spec` and
docs/data.md; the sample dataclasses in :mod:`safe_rlhf.data.types`; rendering and padding in
:mod:`safe_rlhf.data.tokenize`. ``python -m safe_rlhf.data describe SPEC`` inspects a spec.
:func:`labelled_responses` (:mod:`safe_rlhf.data.labelled`) splits preference pairs into safety-labelled single
responses (attribute samples, for a moderation classifier).
"""

from safe_rlhf.data.errors import DataError, SpecError, TokenizerError
from safe_rlhf.data.labelled import labelled_responses
from safe_rlhf.data.readers import Reader, available_readers, get_reader, register_reader
from safe_rlhf.data.spec import DatasetSpec, format_spec, load_samples, parse_spec
from safe_rlhf.data.tokenize import (
    IGNORE_INDEX,
    TokenizedDataset,
    TokenizedPreference,
    TokenizedPrompt,
    TokenizedSFT,
    TokenizeStats,
    check_tokenizer,
    collate_preference,
    collate_prompts,
    collate_sft,
    prompt_ids,
    render_default,
    render_text,
    tokenize_preference,
    tokenize_prompt,
    tokenize_sft,
)
from safe_rlhf.data.types import (
    KINDS,
    AttributeSample,
    LoadResult,
    LoadStats,
    Message,
    PreferenceSample,
    PromptSample,
    Sample,
    SFTSample,
    SourceStats,
    conversation,
)

__all__ = [
    "IGNORE_INDEX",
    "KINDS",
    "AttributeSample",
    "DataError",
    "DatasetSpec",
    "LoadResult",
    "LoadStats",
    "Message",
    "PreferenceSample",
    "PromptSample",
    "Reader",
    "SFTSample",
    "Sample",
    "SourceStats",
    "SpecError",
    "TokenizeStats",
    "TokenizedDataset",
    "TokenizedPreference",
    "TokenizedPrompt",
    "TokenizedSFT",
    "TokenizerError",
    "available_readers",
    "check_tokenizer",
    "collate_preference",
    "collate_prompts",
    "collate_sft",
    "conversation",
    "format_spec",
    "get_reader",
    "labelled_responses",
    "load_samples",
    "parse_spec",
    "prompt_ids",
    "register_reader",
    "render_default",
    "render_text",
    "tokenize_preference",
    "tokenize_prompt",
    "tokenize_sft",
]
