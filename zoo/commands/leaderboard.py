"""`zoo leaderboard`: regenerate results/LEADERBOARD.md, its figures and the README tables from run records."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.errors import ZooError
from zoo.recipe.common import SMOKE_MAX_STEPS

DESCRIPTION = """\
Turn every finished run record under results/ (ZOO_RESULTS_DIR) into markdown tables: pretraining and
continued-training tables per corpus, the GLUE table (best dev setting per task, GLUE average, published
reference rows) and the batch size x learning rate grids, plus PNG loss curves and heatmaps under
results/plots/. Writes results/LEADERBOARD.md and, per fine-tuned model, the GLUE config index
results/glue/<model-tag>/INDEX.md its `cfg` link points to; with --readme FILE also replaces the tables between
<!-- zoo:leaderboard:NAME:start --> and <!-- zoo:leaderboard:NAME:end --> in FILE (NAME: pretrain,
finetune, glue, grids), leaving every other byte of FILE as it is.

The pretraining and continued-training tables list one run per model and corpus: its ok, non-smoke run
with the lowest eval loss (so the lowest perplexity); older, worse and failed runs of that model and
corpus stay under results/ but leave the tables (and a replaced run's GLUE row leaves once the better run
has GLUE scores). --all-runs lists every run. Published reference rows (results/reference/*.yaml) sit
beside zoo's rows, labelled and never ranked among them."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("leaderboard", help="regenerate results/LEADERBOARD.md and README tables from records",
                            description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", metavar="FILE", help="also regenerate the marked tables in FILE (e.g. README.md)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and name each stale table when the files lag the records")
    parser.add_argument("--include-smoke", action="store_true",
                        help=f"also list smoke runs (smoke: true, or train.max_steps below {SMOKE_MAX_STEPS})")
    parser.add_argument("--all-runs", action="store_true",
                        help="list every LM run, not only the best (lowest eval loss) of each model and corpus")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures and the links to them "
                                                                "(give --check the same flags as the write)")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from zoo import paths
    from zoo.files import check_writable
    from zoo.leaderboard import load, outputs, readme

    readme_file = Path(args.readme) if args.readme else None
    if readme_file is not None and not readme_file.is_file():
        raise ZooError(f"--readme {readme_file}: no such file")
    board = load.load_board(paths.results_dir(), include_smoke=args.include_smoke, with_plots=not args.no_plots,
                            all_runs=args.all_runs)
    if args.check:
        problems = outputs.check(board, readme_file)
        for problem in problems:
            print(f"stale: {problem}")
        hint = f"zoo leaderboard{f' --readme {readme_file}' if readme_file else ''}"
        print(f"run `{hint}` to regenerate" if problems else "leaderboard up to date")
        return 1 if problems else 0
    check_writable(board.root, "the leaderboard")
    try:
        changed = outputs.write_leaderboard(board)
        target = board.root / load.LEADERBOARD_FILE
        print(f"{target}: {'updated' if changed else 'unchanged'} ({len(board.lm)} LM runs, "
              f"{len(board.cells)} GLUE cells)")
        if readme_file is not None:
            print(f"{readme_file}: {'updated' if readme.write_readme(board, readme_file) else 'unchanged'}")
    except OSError as exc:  # every file is replaced whole: what was written before stays as it was
        raise ZooError(f"{exc.filename or board.root}: cannot write it ({exc.strerror or exc})") from None
    return 0
