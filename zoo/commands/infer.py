"""`zoo generate`, `zoo fill-mask` and `zoo export`: try a trained model, then publish it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

MODEL_HELP = "zoo run id, checkpoint directory, registry name (`zoo ls`) or hub id"


def bounded(kind: type, low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type that rejects values outside [low, high] (or (low, high] with low_open)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            side = f"> {low}" if low_open else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range (must be {side}"
                                             + (f" and <= {high})" if high is not None else ")"))
        return value

    return parse


def register(sub: argparse._SubParsersAction) -> None:
    generate = sub.add_parser("generate", help="sample continuations of a prompt from a causal LM",
                              description='Example: zoo generate <run-id> "The history of" --num-return-sequences 2')
    generate.add_argument("model", help=MODEL_HELP)
    generate.add_argument("prompt", help="text to continue (may be empty)")
    generate.add_argument("--max-new-tokens", type=bounded(int, 1), default=50, help="tokens to add (default 50)")
    generate.add_argument("--num-return-sequences", type=bounded(int, 1), default=1,
                          help="independent samples (default 1)")
    generate.add_argument("--temperature", type=bounded(float, 0, low_open=True), default=1.0,
                          help="softmax temperature (default 1.0)")
    generate.add_argument("--top-k", type=bounded(int, 0), default=50, help="sample from the k likeliest (0: all)")
    generate.add_argument("--top-p", type=bounded(float, 0, 1, low_open=True), default=1.0,
                          help="nucleus sampling mass (default 1.0: off)")
    generate.add_argument("--seed", type=int, help="seed for reproducible samples")
    generate.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    generate.add_argument("--json", action="store_true", help="print the sequences as a JSON list")
    generate.set_defaults(func=run_generate)

    fill = sub.add_parser("fill-mask", help="predict the masked words of a sentence with a masked LM",
                          description='Example: zoo fill-mask <run-id> "The capital of France is [MASK]." '
                                      "([MASK] or <mask> is rewritten as the model's own mask token)")
    fill.add_argument("model", help=MODEL_HELP)
    fill.add_argument("text", help="text with one or more [MASK] (or <mask>)")
    fill.add_argument("--top-k", type=bounded(int, 1), default=5, help="candidates per mask (default 5)")
    fill.add_argument("--json", action="store_true", help="print the candidates as JSON")
    fill.set_defaults(func=run_fill_mask)

    export = sub.add_parser("export", help="write a run as a standalone HF model directory with a model card",
                            description="Example: zoo export <run-id> --to exported/bert-tiny-imdb "
                                        "[--push-to-hub user/bert-tiny-imdb]; zoo export <run-id> --publish")
    export.add_argument("model", help=MODEL_HELP)
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", type=Path, metavar="DIR", help="output directory")
    target.add_argument("--publish", action="store_true",
                        help="write beside the run's record (results/<kind>/<run-id>/model/, committed with it), "
                             "where the run id finds it on a machine without the run's checkpoint")
    export.add_argument("--force", action="store_true", help="write into a non-empty DIR, replacing its files")
    export.add_argument("--push-to-hub", metavar="REPO", help="then upload DIR to this hub repository")
    export.add_argument("--private", action="store_true", help="create the hub repository as private")
    export.set_defaults(func=run_export)


def quiet_loading() -> None:
    """No weight-loading progress bars between the command and its answer."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def run_generate(args: argparse.Namespace) -> int:
    from zoo.model.inference import Sampling, generate, load_model

    sampling = Sampling(max_new_tokens=args.max_new_tokens, num_return_sequences=args.num_return_sequences,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                        greedy=args.greedy)
    quiet_loading()
    sequences = generate(load_model(args.model), args.prompt, sampling)
    if args.json:
        print(json.dumps(sequences, ensure_ascii=False))
        return 0
    for number, text in enumerate(sequences, 1):
        if len(sequences) > 1:
            print(f"--- {number}")
        print(text)
    return 0


def run_fill_mask(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from zoo.model.inference import fill_mask, load_model

    quiet_loading()
    results = fill_mask(load_model(args.model), args.text, args.top_k)
    if args.json:
        print(json.dumps(results, ensure_ascii=False))
        return 0
    for number, candidates in enumerate(results, 1):
        if len(results) > 1:
            print(f"mask {number}:")
        rows = [[c["token"], f"{c['score']:.4f}", c["sequence"]] for c in candidates]
        print(tabulate(rows, headers=["token", "score", "sequence"]))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from zoo.export import export_model, published_model_dir, push_to_hub

    quiet_loading()
    target = published_model_dir(args.model) if args.publish else args.to
    directory = export_model(args.model, target, force=args.force, repo=args.push_to_hub)
    print(f"exported {args.model} to {directory} (load it with from_pretrained({str(directory)!r}))")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(directory, args.push_to_hub, private=args.private)}")
    return 0
