"""SteerLM (Dong et al. 2023): attribute-conditioned SFT, labelling data with an attribute model, steered generation.

The attributes go into the prompt as a system turn (after the conversation's own system message, if any)::

    attributes: helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:0

(SteerLM's own ``name:value`` comma-separated string; here in the system turn so that any chat template renders it,
or the fallback folds it into the first user turn). Values are integers 0-4, as in HelpSteer.

Train on attribute-labelled data, the labels written into each prompt (``data.steer_attributes``)::

    python -m safe_rlhf.train --config-name sft data.train=toyworld:steer_sft \\
        'data.steer_attributes=[helpfulness,correctness,coherence,complexity,verbosity]'

Label data that has none with a multi-attribute (regression) reward model, into the HelpSteer schema::

    python -m safe_rlhf.steer label --model runs/attribute_model/model --data toyworld:sft --out labelled.jsonl

Generate with requested values, from the CLI or, for any RL recipe and the arena, from config
(``++data.steer_request={helpfulness:4,verbosity:0}``: ``++`` because the key holds a dict)::

    python -m safe_rlhf.steer generate --model runs/steerlm/model --prompt "how do i fix my slow laptop" \\
        --attributes helpfulness=4,correctness=4,coherence=4,complexity=4,verbosity=0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safe_rlhf.data.types import Message, Messages

STEER_PREFIX = "attributes:"
MIN_VALUE, MAX_VALUE = 0, 4
STEER_FILE = "steer.json"
"""Written next to a SteerLM model's weights by SFT: ``{"steer_attributes": [names in training order]}``."""


CANONICAL_ORDER = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
"""HelpSteer's column order: requests are written in it, whatever order a config or the CLI gives them in, so that
they match the string the model was trained on (``data.steer_attributes`` in the same order)."""


def request_order(request: Mapping[str, int]) -> list[str]:
    """The names of ``request`` in HelpSteer's order, other names after them in the given order."""
    known = [name for name in CANONICAL_ORDER if name in request]
    return known + [name for name in request if name not in CANONICAL_ORDER]


def write_trained_attributes(model_dir: str | Path, names: Sequence[str]) -> Path:
    """Record the attributes (in their order) a SteerLM model was trained with, next to its weights."""
    path = Path(model_dir) / STEER_FILE
    path.write_text(json.dumps({"steer_attributes": list(names)}, indent=1) + "\n")
    return path


def carry_trained_attributes(source_dir: str | Path, model_dir: str | Path) -> None:
    """A policy fine-tuned from a SteerLM model (PPO, DPO) keeps its attribute conditioning: copy its steer file."""
    names = trained_attributes(source_dir)
    if names is not None:
        write_trained_attributes(model_dir, names)


def trained_attributes(model_dir: str | Path) -> list[str] | None:
    """The attributes a SteerLM model was trained with (its ``steer.json``), or None for a model without one."""
    from safe_rlhf.config import ConfigError

    path = Path(model_dir) / STEER_FILE
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())["steer_attributes"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not a steer file ({type(error).__name__}: {error})") from None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{path}: steer_attributes must be a list of attribute names")
    return names


def request_names(request: Mapping[str, int], model_dir: str | Path, key: str) -> list[str]:
    """The order to write ``request`` in for the model at ``model_dir``: the order it was trained with when it
    recorded one (the request must then name exactly those attributes, one line naming ``key`` otherwise), else
    HelpSteer's order (:func:`request_order`)."""
    from safe_rlhf.config import ConfigError

    trained = trained_attributes(model_dir)
    if trained is None:
        return request_order(request)
    if set(request) != set(trained):
        missing = [name for name in trained if name not in request]
        unknown = [name for name in request if name not in trained]
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"not trained on {', '.join(unknown)}"] if unknown else []
        )
        raise ConfigError(
            f"{key}: {model_dir} was trained with attributes [{','.join(trained)}] ({STEER_FILE}); the request is "
            f"{'; '.join(parts)}"
        )
    return list(trained)


def steer_text(attributes: Mapping[str, float], names: Sequence[str]) -> str:
    """``attributes: name:value,...`` for ``names`` in order (values rounded to integers)."""
    missing = [name for name in names if name not in attributes]
    if missing:
        raise KeyError(f"no value for attribute(s) {', '.join(missing)}")
    return STEER_PREFIX + " " + ",".join(f"{name}:{round(float(attributes[name]))}" for name in names)


def steered_messages(messages: Messages, attributes: Mapping[str, float], names: Sequence[str]) -> Messages:
    """``messages`` with the attribute string as the system turn (appended on a new line to an existing one)."""
    text = steer_text(attributes, names)
    if messages and messages[0].role == "system":
        return (Message("system", f"{messages[0].content}\n{text}"), *messages[1:])
    return (Message("system", text), *messages)


def steered(sample: Any, attributes: Mapping[str, float], names: Sequence[str]) -> Any:
    """Any sample (SFT, prompt, attribute) with its prompt conditioned on ``attributes``."""
    return dataclasses.replace(sample, messages=steered_messages(sample.messages, attributes, names))


def steer_sft_samples(samples: Sequence[Any], names: Sequence[str]) -> list[Any]:
    """Attribute samples -> SFT samples whose prompt carries their own labels (SteerLM's training data)."""
    from safe_rlhf.config import ConfigError
    from safe_rlhf.data import SFTSample

    steered_samples = []
    for s in samples:
        try:
            messages = steered_messages(s.messages, s.attributes, names)
        except KeyError as error:
            raise ConfigError(f"data.steer_attributes: {s.origin or 'a sample'} has {error.args[0]}") from None
        steered_samples.append(SFTSample(messages=messages, response=s.response, origin=s.origin))
    return steered_samples


def parse_request(text: str) -> dict[str, int]:
    """``"helpfulness=4,verbosity=0"`` -> ``{"helpfulness": 4, "verbosity": 0}`` (ValueError naming the bad part)."""
    request: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"attribute request {part!r} is not NAME=INTEGER")
        number = int(value)
        if not MIN_VALUE <= number <= MAX_VALUE:
            raise ValueError(f"attribute {name.strip()}={number} is outside {MIN_VALUE}-{MAX_VALUE}")
        request[name.strip()] = number
    return request


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def _label(args: argparse.Namespace) -> None:
    import torch

    from safe_rlhf.config import ModelConfig
    from safe_rlhf.data import TokenizedDataset, load_samples
    from safe_rlhf.engines import load_tokenizer
    from safe_rlhf.score_model import end_scores, load_score_model, score_metadata, scores_for_use

    model = load_score_model(args.model)
    metadata = score_metadata(model)
    names = list(metadata.get("attribute_names") or [])
    if metadata.get("objective") != "regression" or len(names) != int(metadata.get("score_dim", 1)):
        raise ValueError(f"{args.model} is not a multi-attribute regression model (no attribute_names recorded)")
    tokenizer = load_tokenizer(ModelConfig(name_or_path=args.model))
    samples = load_samples(args.data, kind="sft").samples
    dataset = TokenizedDataset(samples, tokenizer, args.max_length)
    model.eval()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as file, torch.no_grad():
        for start in range(0, len(dataset), args.batch_size):
            items = [dataset[i] for i in range(start, min(start + args.batch_size, len(dataset)))]
            batch = dataset.collate(items)
            # the scores as the model's users see them (normalized when it was exported with normalize: true)
            scores = scores_for_use(model, end_scores(model, batch["input_ids"], batch["attention_mask"]))  # (B, A)
            for offset, row in enumerate(scores.tolist()):
                sample = samples[start + offset]
                labels = {n: max(MIN_VALUE, min(MAX_VALUE, round(v))) for n, v in zip(names, row)}
                file.write(json.dumps({"prompt": sample.prompt, "response": sample.response, **labels}) + "\n")
    print(f"labelled {len(dataset)} responses with {', '.join(names)} -> {out}")


def _generate(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from safe_rlhf.config import ModelConfig
    from safe_rlhf.data import conversation, prompt_ids
    from safe_rlhf.engines import embedding_rows, fit_vocabulary, generation_suppressed_ids, load_tokenizer

    request = parse_request(args.attributes)
    tokenizer = load_tokenizer(ModelConfig(name_or_path=args.model))
    model = AutoModelForCausalLM.from_pretrained(args.model)
    fit_vocabulary(model, tokenizer)
    model.eval()
    names = request_names(request, args.model, "--attributes")
    messages = steered_messages(conversation(args.prompt, system=args.system), request, names)
    ids = torch.tensor([prompt_ids(messages, tokenizer)])
    torch.manual_seed(args.seed)
    with torch.no_grad():
        output = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=args.max_new_tokens,
            do_sample=args.temperature > 0,
            temperature=args.temperature if args.temperature > 0 else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            suppress_tokens=generation_suppressed_ids(tokenizer, embedding_rows(model)) or None,
        )
    print(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m safe_rlhf.steer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    label = commands.add_parser("label", help="label responses with a multi-attribute regression model (HelpSteer)")
    label.add_argument("--model", required=True, help="a regression score model directory")
    label.add_argument("--data", required=True, help="a dataset spec with responses (kind sft)")
    label.add_argument("--out", required=True, help="output JSONL in the HelpSteer schema")
    label.add_argument("--max-length", type=int, default=128)
    label.add_argument("--batch-size", type=int, default=32)
    generate = commands.add_parser("generate", help="one response with requested attribute values")
    generate.add_argument("--model", required=True, help="a SteerLM-trained policy directory")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--system", default=None, help="a system message before the attributes")
    generate.add_argument("--attributes", required=True, help="NAME=VALUE,... with values 0-4")
    generate.add_argument("--max-new-tokens", type=int, default=32)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    generate.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        (_label if args.command == "label" else _generate)(args)
    except (ValueError, KeyError, OSError) as error:  # DataError and ConfigError are ValueErrors: one line each
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
