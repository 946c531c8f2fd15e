"""Rendering, tokenization (prompt masking, truncation, prompt_too_long), collators and TokenizedDataset.

The tokenizer is built locally: a WordLevel model trained on a few sentences, whitespace + punctuation split, with a
post-processor that prepends <s>. So every word and every ':' is one token, and lengths can be counted by hand.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from safe_rlhf.data import (
    IGNORE_INDEX,
    DataError,
    Message,
    PreferenceSample,
    PromptSample,
    SFTSample,
    TokenizedDataset,
    TokenizedPreference,
    TokenizedPrompt,
    TokenizedSFT,
    TokenizerError,
    collate_preference,
    collate_prompts,
    collate_sft,
    conversation,
    load_samples,
    prompt_ids,
    render_default,
    render_text,
    tokenize_preference,
    tokenize_prompt,
    tokenize_sft,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"

SENTENCES = [
    "BEGINNING OF CONVERSATION: SYSTEM: USER: ASSISTANT:",
    "hello world how are you today",
    "the cat sat on the mat and the dog ran",
    "be brief please answer yes or no",
    "user assistant system",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<s>assistant :{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(models.WordLevel(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    model.train_from_iterator(
        SENTENCES, trainer=trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"])
    )
    model.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", model.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=model, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHAT_TEMPLATE
    return chat


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


# ----------------------------------------------------------------------------------------------------------------------
# rendering


def test_default_template_with_system_and_history():
    messages = (
        Message("system", "be brief"),
        Message("user", "hello"),
        Message("assistant", "hello world"),
        Message("user", "how are you"),
    )
    assert render_default(messages) == (
        "BEGINNING OF CONVERSATION: SYSTEM: be brief USER: hello ASSISTANT: hello world USER: how are you ASSISTANT:"
    )
    assert render_default(conversation("hi"), add_generation_prompt=False) == "BEGINNING OF CONVERSATION: USER: hi"
    assert render_text(conversation("hi"), "yes") == "BEGINNING OF CONVERSATION: USER: hi ASSISTANT: yes"


def test_prompt_ids_without_chat_template_add_bos(tokenizer):
    messages = conversation("hello world")
    expected = [tokenizer.bos_token_id, *ids(tokenizer, "BEGINNING OF CONVERSATION: USER: hello world ASSISTANT:")]
    assert prompt_ids(messages, tokenizer) == expected
    # BEGINNING OF CONVERSATION : USER : hello world ASSISTANT : -> 10 tokens + <s>
    assert len(expected) == 11


def test_prompt_ids_with_chat_template(chat_tokenizer):
    messages = conversation("hello world", system="be brief")
    expected = chat_tokenizer.apply_chat_template(
        [m.to_dict() for m in messages], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert prompt_ids(messages, chat_tokenizer) == expected
    assert chat_tokenizer.convert_ids_to_tokens(expected) == [
        *["<s>", "system", ":", "be", "brief"],
        *["<s>", "user", ":", "hello", "world"],
        *["<s>", "assistant", ":"],
    ]
    assert render_text(messages, tokenizer=chat_tokenizer) == (
        "<s>system : be brief <s>user : hello world <s>assistant :"
    )


# Gemma-style: a system role is an error. And one that renders only user / assistant turns (drops the system turn).
RAISING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<s>{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<s>assistant :{% endif %}"
)
DROPPING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}<s>{{ m['role'] }} : {{ m['content'] }} {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<s>assistant :{% endif %}"
)


@pytest.mark.parametrize("template", [RAISING_TEMPLATE, DROPPING_TEMPLATE], ids=["raises", "drops"])
def test_a_template_without_a_system_turn_gets_the_system_text_in_the_first_user_turn(tokenizer, template):
    from safe_rlhf.data.tokenize import template_keeps_system

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = template
    assert not template_keeps_system(chat)
    messages = (Message("system", "be brief"), Message("user", "hello"), Message("assistant", "hello world"),
                Message("user", "how are you"))  # fmt: skip
    assert render_text(messages, tokenizer=chat) == (
        "<s>user : be brief\n\nhello <s>assistant : hello world <s>user : how are you <s>assistant :"
    )
    assert chat.convert_ids_to_tokens(prompt_ids(messages, chat))[:6] == ["<s>", "user", ":", "be", "brief", "hello"]
    # Without a system message nothing changes.
    assert render_text(conversation("hello"), tokenizer=chat) == "<s>user : hello <s>assistant :"


def test_a_template_with_a_system_turn_keeps_it(chat_tokenizer):
    from safe_rlhf.data.tokenize import template_keeps_system

    assert template_keeps_system(chat_tokenizer)
    assert render_text(conversation("hello", system="be brief"), tokenizer=chat_tokenizer).startswith(
        "<s>system : be brief <s>user : hello"
    )


# ----------------------------------------------------------------------------------------------------------------------
# tokenization


def test_tokenize_sft_masks_the_prompt(tokenizer):
    sample = SFTSample(conversation("hello world"), "how are you")
    item = tokenize_sft(sample, tokenizer, max_length=64)
    prompt = prompt_ids(sample.messages, tokenizer)
    response = [*ids(tokenizer, "how are you"), tokenizer.eos_token_id]
    assert item.input_ids == prompt + response
    assert item.labels == [IGNORE_INDEX] * 11 + response
    assert item.prompt_length == 11 and not item.response_truncated


def test_tokenize_sft_with_chat_template(chat_tokenizer):
    sample = SFTSample(conversation("hello"), "yes")
    item = tokenize_sft(sample, chat_tokenizer, max_length=64)
    # <s> user : hello <s> assistant : | yes </s>
    assert item.prompt_length == 7
    assert item.labels[7:] == [*ids(chat_tokenizer, "yes"), chat_tokenizer.eos_token_id]
    assert item.labels[:7] == [IGNORE_INDEX] * 7


def test_response_truncation_is_recorded(tokenizer):
    sample = SFTSample(conversation("hello world"), "how are you")
    # prompt 11 tokens; max 13 leaves room for "how are", cutting "you" and EOS
    item = tokenize_sft(sample, tokenizer, max_length=13)
    assert item.response_truncated
    assert item.input_ids[11:] == ids(tokenizer, "how are")
    assert tokenizer.eos_token_id not in item.input_ids
    # exactly fitting (11 + 3 words + EOS = 15) is not a truncation
    assert not tokenize_sft(sample, tokenizer, max_length=15).response_truncated
    assert tokenize_sft(sample, tokenizer, max_length=14).response_truncated


def test_prompt_too_long_is_rejected_with_its_origin(tokenizer):
    sample = SFTSample(conversation("hello world"), "yes", origin="data/sft.jsonl:7")
    with pytest.raises(DataError) as caught:
        tokenize_sft(sample, tokenizer, max_length=11)  # the 11-token prompt leaves no room
    assert str(caught.value) == (
        "data/sft.jsonl:7: field 'prompt': prompt is 11 tokens; max_length 11 leaves no room for a response"
    )
    assert (caught.value.reason, caught.value.path, caught.value.row) == ("prompt_too_long", "data/sft.jsonl", 7)
    pair = PreferenceSample(conversation("hello world"), ("yes", "no"), better_id=0)
    with pytest.raises(DataError, match="leaves no room for a response"):
        tokenize_preference(pair, tokenizer, max_length=5)
    # prompts for generation may use the whole max_length
    assert len(tokenize_prompt(PromptSample(conversation("hello world")), tokenizer, max_length=11).input_ids) == 11
    with pytest.raises(DataError, match="prompt is 11 tokens; max_length is 10"):
        tokenize_prompt(PromptSample(conversation("hello world")), tokenizer, max_length=10)


def test_tokenize_preference(tokenizer):
    sample = PreferenceSample(
        conversation("hello"),
        ("yes", "no please"),
        better_id=1,
        safer_id=0,
        is_safe=(True, False),
        severity=(0, 2),
    )
    item = tokenize_preference(sample, tokenizer, max_length=64)
    prompt = prompt_ids(sample.messages, tokenizer)
    eos = tokenizer.eos_token_id
    assert item.input_ids == ([*prompt, *ids(tokenizer, "yes"), eos], [*prompt, *ids(tokenizer, "no please"), eos])
    assert item.lengths == (len(prompt) + 2, len(prompt) + 3)
    assert (item.better_id, item.safer_id, item.is_safe, item.severity) == (1, 0, (True, False), (0, 2))
    cut = tokenize_preference(sample, tokenizer, max_length=len(prompt) + 2)
    assert cut.response_truncated == (False, True)


def test_pad_token_must_exist_and_differ_from_eos(tokenizer):
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    sample = SFTSample(conversation("hello"), "yes")
    with pytest.raises(TokenizerError, match="no pad token"):
        tokenize_sft(sample, no_pad, max_length=32)
    pad_is_eos = copy.deepcopy(tokenizer)
    pad_is_eos.pad_token = pad_is_eos.eos_token
    with pytest.raises(TokenizerError, match="pad token equals its EOS"):
        tokenize_sft(sample, pad_is_eos, max_length=32)
    with pytest.raises(TokenizerError):
        TokenizedDataset([sample], pad_is_eos, max_length=32)


# ----------------------------------------------------------------------------------------------------------------------
# collators (hand-written items, pad id 0)


def test_collate_sft_right_pads():
    items = [
        TokenizedSFT(input_ids=[5, 6, 7], labels=[-100, 6, 7], prompt_length=1, response_truncated=False),
        TokenizedSFT(input_ids=[5, 8], labels=[-100, 8], prompt_length=1, response_truncated=False),
    ]
    batch = collate_sft(items, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 8, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 8, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_prompts_left_pads():
    items = [TokenizedPrompt([5, 6, 7]), TokenizedPrompt([9])]
    batch = collate_prompts(items, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_collate_preference_orders_better_worse_safer_unsafer():
    items = [
        # better = 1, safer = 0: better is the unsafe one
        TokenizedPreference(([1, 2], [1, 3, 3]), 1, (False, False), 1, 0, (True, False), (0, 2)),
        # no safety labels: safer/unsafer repeat better/worse
        TokenizedPreference(([1, 4, 4, 4], [1, 5]), 1, (False, False), 0),
    ]
    batch = collate_preference(items, pad_token_id=0)
    assert batch["better_input_ids"].tolist() == [[1, 3, 3, 0], [1, 4, 4, 4]]
    assert batch["better_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["worse_input_ids"].tolist() == [[1, 2, 0, 0], [1, 5, 0, 0]]
    assert batch["safer_input_ids"].tolist() == [[1, 2, 0, 0], [1, 4, 4, 4]]
    assert batch["unsafer_input_ids"].tolist() == [[1, 3, 3, 0], [1, 5, 0, 0]]
    assert batch["unsafer_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch["safer_is_safe"].tolist() == [1, -1]
    assert batch["unsafer_is_safe"].tolist() == [0, -1]
    assert batch["has_safety_labels"].tolist() == [True, False]
    assert batch["better_id"].tolist() == [1, 0]
    assert batch["safer_id"].tolist() == [0, -1]
    assert batch["is_safe"].tolist() == [[1, 0], [-1, -1]]
    assert batch["severity"].tolist() == [[0, 2], [-1, -1]]


# ----------------------------------------------------------------------------------------------------------------------
# TokenizedDataset


def test_tokenized_dataset_counts_and_skips(tokenizer):
    samples = [
        SFTSample(conversation("hello"), "yes", origin="a:1"),  # prompt 10 tokens, + yes </s> = 12
        SFTSample(conversation("hello world how are you today"), "yes", origin="a:2"),  # prompt 15 tokens > 13
        SFTSample(conversation("hello"), "the cat sat on the mat", origin="a:3"),  # 10 + 7 > 13: truncated
    ]
    dataset = TokenizedDataset(samples, tokenizer, max_length=13, on_error="skip")
    assert len(dataset) == 2
    assert dataset.stats.to_dict() == {"kept": 2, "skipped": {"prompt_too_long": 1}, "response_truncated": 1}
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == (2, 13)
    assert batch["input_ids"][0, 11:].tolist() == [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert batch["labels"][0, 12].item() == IGNORE_INDEX
    with pytest.raises(DataError, match="a:2: field 'prompt': prompt is 15 tokens"):
        TokenizedDataset(samples, tokenizer, max_length=13)


def test_tokenized_dataset_from_load_result_with_a_dataloader(tokenizer):
    result = load_samples(f"pku-safe-rlhf:{FIXTURES / 'pku_safe_rlhf.jsonl'}", "preference")
    dataset = TokenizedDataset(result, tokenizer, max_length=256)
    assert dataset.kind == "preference" and len(dataset) == 4
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=dataset.collate)
    batch = next(iter(loader))
    assert batch["better_input_ids"].shape == batch["worse_input_ids"].shape == batch["safer_input_ids"].shape
    assert batch["has_safety_labels"].tolist() == [True] * 4
    prompts = TokenizedDataset(result, tokenizer, max_length=256, as_kind="prompt")
    left = prompts.collate([prompts[i] for i in range(4)])
    assert (left["attention_mask"][:, -1] == 1).all()  # left-padded: every row ends with a real token
    attribute = load_samples(f"helpsteer:{FIXTURES / 'helpsteer.jsonl'}", "attribute")
    as_sft = TokenizedDataset(attribute, tokenizer, max_length=256)
    assert as_sft.kind == "sft" and len(as_sft) == 2
