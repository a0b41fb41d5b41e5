"""`zoo pretrain` and `zoo finetune`: train a language model from a recipe and record the run."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.commands.options import add_recipe_options
from zoo.errors import ZooError
from zoo.paths import checkpoints_dir
from zoo.recipe.common import read_yaml
from zoo.recipe.lm import Recipe, compose, load_recipe, resolve
from zoo.recipe.schema import field_docs
from zoo.record.schema import RECIPE_FILE
from zoo.train.launch import add_launch_options, maybe_relaunch
from zoo.train.ranks import is_main_rank, leave_launch

EXAMPLES = {
    "pretrain": "zoo pretrain bert-mini wikipedia --set train.max_steps=200",
    "finetune": "zoo finetune distilgpt2 wikitext-2 --set model.name=/path/to/checkpoint",
}


def recipe_keys_help() -> str:
    rows = [f"  {key:<32} {doc} (default: {default!r})" for key, _, doc, default in field_docs(Recipe)]
    return "recipe keys (override with --set KEY=VALUE or --KEY VALUE):\n" + "\n".join(rows)


def register(sub: argparse._SubParsersAction) -> None:
    for kind, summary in (("pretrain", "pretrain a model from scratch (MLM without NSP, or CLM)"),
                          ("finetune", "continue training a pretrained checkpoint on a corpus")):
        parser = sub.add_parser(kind, help=summary, description=f"{summary}. Example: {EXAMPLES[kind]}",
                                epilog=recipe_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("model", nargs="?", help="model registry name, hub id, run id or directory")
        parser.add_argument("corpus", nargs="?", help="corpus registry name (see `zoo ls`)")
        add_recipe_options(parser)
        parser.add_argument("--resume", nargs="?", const="latest", metavar="RUN_ID",
                            help="continue a run from its last checkpoint (default: newest run of this recipe)")
        parser.add_argument("--smoke", action="store_true", help="mark the run as a smoke test (off leaderboards)")
        parser.add_argument("--dry-run", action="store_true", help="print the resolved recipe and exit")
        add_launch_options(parser)
        add_slurm_options(parser)
        parser.set_defaults(func=run_command, kind=kind)
    evaluate = sub.add_parser("eval", help="re-evaluate a run's saved checkpoint (perplexity on its eval set)")
    evaluate.add_argument("run", help="run id (results/<kind>/<run-id>)")
    evaluate.add_argument("--data-dir", metavar="DIR", help="local data mirror (default: $ZOO_DATA_DIR)")
    evaluate.set_defaults(func=eval_command)


def add_slurm_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Slurm (see README 'Running on a cluster')")
    group.add_argument("--slurm", metavar="KEY=VALUE,...",
                       help="submit the run as one Slurm job through submitit, e.g. nodes=2,gpus=8,time=600"
                            "[,partition=P,account=A,cpus=C,mem=GB]; needs pip install -e '.[slurm]'")
    group.add_argument("--wait", action="store_true", help="with --slurm: follow the job to its end (default: print "
                                                           "the job id and how to follow it, and exit)")


def eval_command(args: argparse.Namespace) -> int:
    from zoo.record.schema import LMRecord
    from zoo.record.store import find_run
    from zoo.train.lm import evaluate_checkpoint

    found = find_run(args.run)
    if found is None or not isinstance(found[1], LMRecord):
        raise ZooError(f"no pretraining or continued-training run {args.run!r} under results/")
    record_path, record = found
    saved = record_path.parent / record.recipe
    recipe = resolve(load_recipe(read_yaml(saved), str(saved)))
    result, note = evaluate_checkpoint(recipe, args.run)
    if note:
        print(f"zoo: {note}")
    print(f"run {args.run}: perplexity {result['perplexity']:.6f}, eval loss {result['loss']:.6f} "
          f"over {result['tokens']} tokens (recorded: {record.metrics.perplexity})")
    return 0


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The resolved recipe a pretrain/finetune command line asks for."""
    if args.recipe:
        path = Path(args.recipe)
        raw = read_yaml(path)
        raw.setdefault("kind", args.kind)
        recipe = load_recipe(raw, str(path), args.overrides)
        if args.model and args.model != recipe.model.name:
            raise ZooError(f"{path}: recipe trains {recipe.model.name!r}, not {args.model!r}")
    elif args.model and args.corpus:
        recipe, _ = compose(args.kind, args.model, args.corpus, args.overrides)
    else:
        raise ZooError(f"zoo {args.kind}: give MODEL CORPUS or --recipe FILE")
    if recipe.kind != args.kind:
        raise ZooError(f"recipe kind is {recipe.kind!r}; run it with `zoo {recipe.kind}`")
    if args.smoke:
        recipe.smoke = True
    return resolve(recipe)


def run_command(args: argparse.Namespace) -> int:
    from zoo.recipe.lm import recipe_yaml
    from zoo.train.slurm import check_lm_flags

    check_lm_flags(args)
    if args.resume and args.resume != "latest":
        saved = checkpoints_dir() / args.resume / RECIPE_FILE
        if not saved.is_file():
            raise ZooError(f"--resume {args.resume}: no run at {saved.parent}")
        recipe = resolve(load_recipe(read_yaml(saved), str(saved), args.overrides))
        run_id = args.resume
    else:
        recipe = recipe_from_args(args)
        run_id = None
    if args.dry_run:
        print(recipe_yaml(recipe), end="")
        return 0
    if run_id is not None and finished_ok(recipe.kind, run_id):
        print(f"run {run_id} is complete (results/{recipe.kind}/{run_id}/run.json); nothing to resume")
        return 0
    launched = maybe_relaunch(args)  # checked recipe, now run it in every rank of the launch
    if launched is not None:
        return launched
    from zoo.train.lm import find_resumable, run_lm

    if args.resume == "latest":
        run_id = find_resumable(recipe)
        if run_id is None:
            raise ZooError("--resume: no earlier run of this recipe has a checkpoint; run without --resume")
        if finished_ok(recipe.kind, run_id):
            print(f"run {run_id} is complete (results/{recipe.kind}/{run_id}/run.json); nothing to resume")
            return 0
    if args.slurm is not None:
        from zoo.train.slurm import run_lm_on_slurm

        record = run_lm_on_slurm(recipe, run_id, bool(args.resume), args.slurm, args.wait)
        if record is None:  # submitted, not followed: the job runs on after this process
            return 0
    else:
        record = run_lm(recipe, run_id=run_id, resume=bool(args.resume))
        leave_launch()
    if record.ok and is_main_rank():
        m, before = record.metrics, record.before
        change = f" (before fine-tuning {before.perplexity:.2f})" if before and before.perplexity else ""
        print(f"run {record.run_id}: perplexity {m.perplexity:.2f}{change}, eval loss {m.eval_loss:.4f} "
              f"over {m.eval_tokens} tokens; {record.steps} steps, {record.tokens_seen} tokens, "
              f"{record.tokens_per_s or 0:.0f} tokens/s")
        print(f"record: results/{record.kind}/{record.run_id}/run.json")
    return 0


def finished_ok(kind: str, run_id: str) -> bool:
    """True when run `run_id` already has an ok record: a resume leaves it as it is."""
    from zoo.record.store import read_record, run_dir

    path = run_dir(kind, run_id) / "run.json"
    try:
        return path.is_file() and read_record(path).ok
    except ZooError:
        return False
