"""Command line of the toy world.

python -m safe_rlhf.toyworld generate --out /tmp/toyworld [--seed 0] [--num-sft 4000] [--num-preference 6000]
    [--num-preference-test 1000] [--num-prompts 2000] [--num-eval-prompts 256] [--num-qa 4000] [--num-qa-test 1000]
    [--num-system-sft 4000] [--num-system-preference 6000] [--num-system-prompts 2000] [--num-system-eval 256]
    [--num-steer-sft 4000] [--num-steer-test 500]
    [--risky-fraction 0.5] [--length-bias 0.2] [--label-noise 0.05] [--sft-comply-rate 0.33]
python -m safe_rlhf.toyworld judge --prompt "how to break into a bank server" --response "sure scan then malware"
python -m safe_rlhf.toyworld corpus --out /tmp/toyworld/corpus.txt [--seed 0] [--num-bytes 50000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from safe_rlhf.toyworld.generate import BasePolicy, corpus_text, generate
from safe_rlhf.toyworld.judges import harm, helpfulness
from safe_rlhf.toyworld.world import find_request


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m safe_rlhf.toyworld", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write sft / preference / prompt / qa files for one seed")
    gen.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--num-sft", type=int, default=4000)
    gen.add_argument("--num-preference", type=int, default=6000)
    gen.add_argument("--num-preference-test", type=int, default=1000)
    gen.add_argument("--num-prompts", type=int, default=2000)
    gen.add_argument("--num-eval-prompts", type=int, default=256)
    gen.add_argument("--num-qa", type=int, default=4000, help="labelled single responses (moderation training)")
    gen.add_argument("--num-qa-test", type=int, default=1000, help="labelled single responses, held-out prompts")
    gen.add_argument("--num-system-sft", type=int, default=4000, help="SFT records with system messages")
    gen.add_argument("--num-system-preference", type=int, default=6000, help="DPO pairs with system messages")
    gen.add_argument("--num-system-prompts", type=int, default=2000, help="RL prompts with system messages")
    gen.add_argument("--num-system-eval", type=int, default=256, help="held-out prompts, unseen system messages")
    gen.add_argument("--num-steer-sft", type=int, default=4000, help="HelpSteer-style attribute-labelled responses")
    gen.add_argument("--num-steer-test", type=int, default=500, help="the same, held-out prompts")
    gen.add_argument("--risky-fraction", type=float, default=0.5, help="share of prompts that ask for harm")
    gen.add_argument("--length-bias", type=float, default=0.2, help="P(label = longer response) before noise")
    gen.add_argument("--label-noise", type=float, default=0.05, help="P(helpfulness label flipped)")
    gen.add_argument(
        "--sft-comply-rate", type=float, default=BasePolicy.comply_rate, help="SFT harm rate on risky prompts"
    )

    judge = commands.add_parser("judge", help="print the ground-truth helpfulness and harm of a response")
    judge.add_argument("--prompt", required=True)
    judge.add_argument("--response", required=True)
    judge.add_argument("--system", default=None, help="a system message: helpfulness under its stated preferences")
    judge.add_argument("--image-class", default=None, help="the picture an image question asks about (vision world)")

    vision = commands.add_parser("vision", help="write the multimodal world's files (images + seed schemas)")
    vision.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    vision.add_argument("--seed", type=int, default=0)

    corpus = commands.add_parser("corpus", help="write tokenizer-training text in the world's language")
    corpus.add_argument("--out", type=Path, required=True, help="output file")
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--num-bytes", type=int, default=50_000)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "generate":
        started = time.perf_counter()
        paths = generate(
            args.out,
            seed=args.seed,
            num_sft=args.num_sft,
            num_preference=args.num_preference,
            num_preference_test=args.num_preference_test,
            num_prompts=args.num_prompts,
            num_eval_prompts=args.num_eval_prompts,
            num_qa=args.num_qa,
            num_qa_test=args.num_qa_test,
            num_system_sft=args.num_system_sft,
            num_system_preference=args.num_system_preference,
            num_system_prompts=args.num_system_prompts,
            num_system_eval=args.num_system_eval,
            num_steer_sft=args.num_steer_sft,
            num_steer_test=args.num_steer_test,
            risky_fraction=args.risky_fraction,
            length_bias=args.length_bias,
            label_noise=args.label_noise,
            sft_comply_rate=args.sft_comply_rate,
        )
        elapsed = time.perf_counter() - started
        for name, path in paths.items():
            lines = sum(1 for _ in path.open(encoding="utf-8")) if path.suffix == ".jsonl" else None
            print(f"{name:16s} {path}" + (f"  ({lines} records)" if lines is not None else ""))
        stats = json.loads(paths["world"].read_text(encoding="utf-8"))["stats"]
        sft, preference = stats["sft"], stats["preference"]
        print(
            f"sft: harm rate on risky prompts {sft['risky_harm_rate']}, severe {sft['risky_severe_rate']}; "
            f"preference: label vs judge disagreement {preference['label_disagrees_with_judge']}, "
            f"label prefers longer {preference['label_prefers_longer']} (judge {preference['judge_prefers_longer']}), "
            f"pairs with an exploit negative {preference['pairs_with_exploit']}"
        )
        mixed = preference["mixed_safety_risky"]
        print(
            f"risky prompts, one safe and one unsafe response ({mixed['pairs']} pairs): label prefers the unsafe one "
            f"{mixed['label_prefers_unsafe']} (judge {mixed['judge_prefers_unsafe']}), unsafe minus safe length "
            f"{mixed['mean_length_unsafe_minus_safe']} words"
        )
        for name in ("qa", "qa_test"):
            print(
                f"{name}: unsafe rate {stats[name]['unsafe_rate']}, responses per severity level "
                f"{stats[name]['response_severity_counts']}"
            )
        print(f"generated in {elapsed:.2f} s")
    elif args.command == "vision":
        from safe_rlhf.toyworld.vision_data import generate_vision

        started = time.perf_counter()
        paths = generate_vision(args.out, seed=args.seed)
        for name, path in paths.items():
            print(f"{name:24s} {path}")
        world = json.loads((Path(args.out) / "world.json").read_text(encoding="utf-8"))
        print(f"{world['stats']}; generated in {time.perf_counter() - started:.2f} s")
    elif args.command == "judge" and args.image_class is not None:
        from safe_rlhf.toyworld import vision

        try:
            request = vision.request_of(args.prompt, args.image_class)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        verdict = vision.harm(args.prompt, args.image_class, args.response)
        described = (
            "unknown (not an image question)" if request is None else f"risky={request.risky} task={request.task!r}"
        )
        print(f"request:     {described}")
        print(f"helpfulness: {vision.helpfulness(args.prompt, args.image_class, args.response):g}")
        print(f"harm:        severity={verdict.severity} safe={verdict.is_safe} categories={list(verdict.categories)}")
    elif args.command == "judge":
        request = find_request(args.prompt)
        verdict = harm(args.prompt, args.response)
        described = (
            "unknown (not a toy-world prompt)"
            if request is None
            else (f"topic={request.topic} risky={request.risky} task={request.task!r}")
        )
        print(f"request:     {described}")
        print(f"helpfulness: {helpfulness(args.prompt, args.response):g}")
        if args.system is not None:
            from safe_rlhf.toyworld.system import adherence, system_helpfulness

            followed = adherence(args.system, args.response)
            under = system_helpfulness(args.system, args.prompt, args.response)
            shown = "n/a (no preference stated)" if followed is None else f"{followed:g}"
            print(f"under the system message: helpfulness {under:g}, adherence {shown}")
        print(f"harm:        severity={verdict.severity} safe={verdict.is_safe} categories={list(verdict.categories)}")
    else:
        text = corpus_text(seed=args.seed, num_bytes=args.num_bytes)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {len(text)} bytes, {text.count(chr(10))} lines to {args.out}")


if __name__ == "__main__":
    main()
