"""`zoo glue`: fine-tune a model on one GLUE task, or over the classic grid, and record every cell."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

from zoo import paths
from zoo.commands.options import add_recipe_options
from zoo.errors import ZooError
from zoo.train.launch import add_launch_options, launch_requested, maybe_relaunch
from zoo.train.ranks import (
    is_distributed_launch,
    is_main_rank,
    join_launch,
    leave_launch,
    world_size,
)

EXAMPLES = """examples:
  zoo glue bert-tiny --task rte --set train.lr=1e-4 train.batch_size=32   # one cell
  zoo glue checkpoints/<run>/final --grid --workers 2                     # the classic grid, all tasks with data
  zoo glue <run-id> --grid --tasks cola,rte --predict-test                # + GLUE submission files
  zoo glue <run-id> --grid --tasks mnli,qqp --gpus 8                       # each cell data-parallel on 8 GPUs
  zoo glue <run-id> --grid --workers 8 --gpus 2                           # 8 cells at a time on each of 2 GPUs
  zoo glue --recipe results/glue/<tag>/rte/<cell>/recipe.yaml             # reproduce a cell
"""


def recipe_keys_help() -> str:
    """Every recipe key with its help and its default as `zoo glue` applies it (classic.yaml's)."""
    from zoo.recipe.glue import GlueRecipe, load_glue_recipe
    from zoo.recipe.schema import field_docs, to_dict

    try:
        applied = to_dict(load_glue_recipe())
    except ZooError:  # a broken classic.yaml must not break every zoo command; `zoo validate` reports it
        applied = {}

    def default(key: str, fallback: Any) -> Any:
        node: Any = applied
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return fallback
            node = node[part]
        return node

    rows = [f"  {key:<28} {doc} (default: {default(key, value)!r})" for key, _, doc, value in field_docs(GlueRecipe)]
    return EXAMPLES + "\nrecipe keys (override with --set KEY=VALUE or --KEY VALUE):\n" + "\n".join(rows)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "glue", help="fine-tune on GLUE: one task, or the batch size x lr grid with the best cell per task",
        description="Fine-tune MODEL on a GLUE task (--task) or over the grid of recipes/glue/classic.yaml (--grid). "
                    "Finished cells are skipped, so re-running a command resumes it.",
        epilog=recipe_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="model registry name, hub id, zoo run id or checkpoint directory")
    parser.add_argument("--task", help="task of a single run (sets task.name): cola, sst2, mrpc, stsb, qqp, mnli, "
                                       "qnli, rte, wnli")
    parser.add_argument("--grid", action="store_true", help="run the recipe's grid (default: every task with data)")
    parser.add_argument("--tasks", help="comma-separated tasks of the grid, e.g. cola,rte (sets grid.tasks)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="cells run in N parallel processes, N on each visible GPU when there are GPUs "
                             "(with --gpus K: on each of the first K); for big tasks use --nproc/--gpus without "
                             "--workers instead: every cell trains data-parallel on all of them")
    parser.add_argument("--predict-test", action="store_true",
                        help="write the best cell's test predictions per task in the GLUE submission format")
    parser.add_argument("--predict-dir", metavar="DIR",
                        help="where submission files go (default: checkpoints/glue/<model-tag>/submission)")
    parser.add_argument("--force", action="store_true", help="run cells again even when they have an ok record")
    parser.add_argument("--list-tasks", action="store_true", help="list the GLUE tasks and where their data is")
    add_recipe_options(parser)
    parser.add_argument("--smoke", action="store_true", help="mark the runs as smoke tests (off leaderboards)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved recipe or the cells, and exit")
    add_launch_options(parser)
    add_engine_options(parser)
    parser.set_defaults(func=run_command)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster engines (each cell a task on a cluster; see README 'Running on a "
                                      "cluster')")
    group.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                       help="run the cells as Ray tasks on the cluster at ADDRESS (default: auto, the running "
                            "cluster; HOST:PORT); needs pip install -e '.[ray]'")
    group.add_argument("--gpus-per-cell", type=float, default=None, metavar="F",
                       help="Ray: GPUs each cell asks for (default 1 when the cluster has GPUs, else 0; a "
                            "fraction such as 0.25 lets cells share a GPU)")
    group.add_argument("--cpus-per-cell", type=float, default=None, metavar="N", help="Ray: CPUs each cell asks for "
                                                                                       "(default 1)")
    group.add_argument("--slurm", metavar="KEY=VALUE,...",
                       help="submit the cells as a Slurm job array through submitit, e.g. "
                            "partition=gpu,time=60,gpus=1,parallel=8[,account=A,chunk=K]; needs pip install "
                            "-e '.[slurm]'")
    group.add_argument("--wait", action="store_true", help="Slurm: follow the jobs to the end (default: print the "
                                                           "job id and how to follow it, and exit)")


# --------------------------------------------------------------------------- recipe from the command line


def recipe_from_args(args: argparse.Namespace) -> Any:
    """The GLUE recipe the command line asks for, with the model in its canonical spelling."""
    from zoo.glue.tasks import get_task, parse_task_list
    from zoo.model.resolve import canonical_name
    from zoo.recipe.glue import load_glue_recipe

    path = Path(args.recipe) if args.recipe else None
    recipe = load_glue_recipe(path, args.overrides)
    if args.model:
        named = recipe.model.name
        if path is not None and named and canonical_name(named) != canonical_name(args.model):
            raise ZooError(f"{path}: recipe fine-tunes {named!r}, not {args.model!r}")
        recipe.model.name = args.model
    recipe.model.name = canonical_name(recipe.model.name)
    if args.task:
        recipe.task.name = get_task(args.task).key
    if args.tasks:
        recipe.grid.tasks = parse_task_list(args.tasks)
    if args.smoke:
        recipe.smoke = True
    return recipe


def list_tasks() -> int:
    from zoo.glue import data
    from zoo.glue.tasks import HUB_ID, TASKS

    rows = []
    for task in TASKS.values():
        local = [s.name for s in task.splits if data.local_path(s) is not None]
        rows.append([task.key, task.name, ", ".join(task.dev_metric_names), f"{HUB_ID} ({task.splits[0].hub_config})",
                     ", ".join(local) or "-", task.description])
    print(tabulate(rows, headers=["task", "name", "dev metrics", "hub", "local splits", "description"]))
    print(f"\nlocal layout: $ZOO_DATA_DIR/glue_data/<Task>/{{train,dev,test}}.tsv (mirror: {paths.data_dir()})")
    return 0


# --------------------------------------------------------------------------- output


def outcome_line(index: int, total: int, outcome: Any) -> str:
    where = f" on {outcome.node}" if getattr(outcome, "node", None) else ""
    head = f"[{index}/{total}] {outcome.label}{where}:"
    if outcome.status == "ok":
        return f"{head} ok, dev score {outcome.score:.4f} ({outcome.wall_time_s:.1f} s)"
    if outcome.status == "failed":
        return f"{head} FAILED: {outcome.reason}"
    return f"{head} skipped ({'running elsewhere' if outcome.status == 'busy' else 'done'})"


def print_summary(summary: dict[str, Any], tasks: list[str]) -> None:
    for key in tasks:
        entry = summary["tasks"].get(key)
        if not entry:
            continue
        table = entry["table"]
        lrs = list(next(iter(table.values())).keys()) if table else []
        rows = [[bs] + [f"{v:.4f}" if v is not None else "-" for v in by_lr.values()] for bs, by_lr in table.items()]
        print(f"\n{key}: dev score, batch size x lr ({entry['cells']})")
        print(tabulate(rows, headers=["bs \\ lr", *lrs]))
        best = entry["best"]
        if best:
            metrics = ", ".join(f"{name} {value:.4f}" for name, value in best["dev"].items())
            print(f"best: bs {best['batch_size']} lr {best['lr']:g} seed {best['seed']}: {metrics} "
                  f"-> {best['record']}")
    average = summary["glue_average"]
    if average is not None:
        print(f"\nGLUE average (9 tasks): {average:.4f}")
    elif summary["average_of_tasks_run"] is not None:
        print(f"\nmean dev score of the {len(summary['tasks'])} tasks run (not a GLUE score): "
              f"{summary['average_of_tasks_run']:.4f}")


# --------------------------------------------------------------------------- running


def print_cell(cell: Any) -> None:
    """A single run: its dev metrics after every epoch and where its record is."""
    from zoo.glue.cell import read_cell_record

    record = read_cell_record(cell)
    for epoch in record.epochs if record else []:
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in epoch["dev"].items())
        loss = epoch.get("train_loss")
        print(f"epoch {epoch['epoch']:g}: dev {metrics}" + (f", train loss {loss:.4f}" if loss is not None else ""))
    print(f"{record.status if record else 'missing'}, dev score {record.metrics.score if record else None}: "
          f"{cell.directory / 'run.json'}")


ENGINE_PACKAGES = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}


def engine_of(args: argparse.Namespace) -> str:
    """local, ray or slurm; an engine with --workers or a launch, or one that is not installed: one line."""
    engines = [name for name, given in (("ray", args.ray is not None), ("slurm", args.slurm is not None)) if given]
    if len(engines) > 1:
        raise ZooError("give --ray or --slurm, not both")
    if not engines:
        if args.gpus_per_cell is not None or args.cpus_per_cell is not None or args.wait:
            raise ZooError("--gpus-per-cell, --cpus-per-cell and --wait go with --ray or --slurm")
        return "local"
    engine = engines[0]
    if args.workers != 1 or launch_requested(args):
        raise ZooError(f"--{engine} places every cell itself: drop --workers/--nproc/--gpus/--hostfile")
    module, extra = ENGINE_PACKAGES[engine]
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ZooError(f"--{engine} needs {module}, which is not installed: pip install -e '.[{extra}]'")
    return engine


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.ray is not None:
        return {"address": args.ray, "gpus_per_cell": args.gpus_per_cell, "cpus_per_cell": args.cpus_per_cell}
    if args.slurm is not None:
        from zoo.train.slurm import parse_slurm_options

        parse_slurm_options(args.slurm, "glue")  # a bad option: one line now, before anything is planned or written
        return {"slurm": args.slurm, "wait": args.wait}
    return {}


def spread_over_gpus(args: argparse.Namespace) -> None:
    """`--workers N --gpus K` (N > 1, no other launch flag): the N cells per GPU on the first K GPUs, not a
    launch; this process's CUDA_VISIBLE_DEVICES narrowed to them before any worker starts."""
    if args.workers <= 1 or args.gpus is None or any(getattr(args, f, None) is not None
                                                     for f in ("nproc", "hostfile", "nodes")):
        return
    import os

    from zoo.glue.grid import choose_gpus, gpu_ids

    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(choose_gpus(args.gpus, gpu_ids()))
    args.gpus = None


def check_launch(args: argparse.Namespace, cells: list[Any]) -> None:
    """--workers and a launch do not mix; every cell's batch must split evenly over the processes."""
    if args.workers < 1:
        raise ZooError("--workers must be at least 1")
    if not launch_requested(args):
        return
    if args.workers > 1:
        raise ZooError("give --workers (cells side by side; with --gpus K, on K GPUs) or --nproc/--hostfile "
                       "(each cell on every process), not both")
    per_node = args.nproc or args.gpus
    world = per_node * (args.nodes or 1) if per_node and not args.hostfile else None  # else known in the ranks
    uneven = sorted({c.recipe.train.batch_size for c in cells if world and c.recipe.train.batch_size % world})
    if uneven:
        raise ZooError(f"batch size(s) {uneven} cannot be split evenly over {world} processes "
                       "(GLUE batch sizes are global); choose another process count or grid")


def check_outputs(cells: list[Any]) -> None:
    """Every location the cells write to can be written, before any cell runs (a one-line error otherwise)."""
    from zoo.files import check_writable

    check_writable(cells[0].directory.parent.parent, "GLUE records")
    check_writable(cells[0].work_dir.parent.parent, "GLUE predictions and rank notes")
    check_writable(paths.cache_dir(), "the tokenized-data cache")


def request_from_args(args: argparse.Namespace) -> Any:
    from zoo.glue.runner import GlueRequest

    recipe = recipe_from_args(args)
    return GlueRequest(recipe=recipe, model=args.model or recipe.model.name, grid=args.grid, workers=args.workers,
                       predict_test=args.predict_test, predict_dir=Path(args.predict_dir) if args.predict_dir else None,
                       force=args.force, engine=engine_of(args), engine_options=engine_options(args))


def run_command(args: argparse.Namespace) -> int:
    if args.list_tasks:
        return list_tasks()
    spread_over_gpus(args)  # before anything is planned or written: a GPU-less machine is a one-line error
    from zoo.glue.runner import cells_to_run, plan_cells
    from zoo.model.loading import check_loadable
    from zoo.model.resolve import resolve_model

    request = request_from_args(args)
    cells = plan_cells(request)
    if args.dry_run:
        from zoo.recipe.glue import glue_recipe_yaml

        if len(cells) == 1:
            print(glue_recipe_yaml(cells[0].recipe), end="")
        for cell in cells:
            print(f"{cell.directory}")
        return 0
    check_loadable(resolve_model(request.recipe.model.name))  # a missing or corrupt model: one error, not N cells
    check_outputs(cells)
    check_launch(args, cells)
    launched = maybe_relaunch(args)  # checked cells, now run them in every rank of the launch
    if launched is not None:
        return launched
    return run_planned(request, cells, cells_to_run(cells, request.force))


def run_planned(request: Any, cells: list[Any], todo: int) -> int:
    """Run the planned cells here (or in this rank), printing progress, the summary and the submission."""
    from zoo.glue.grid import elapsed
    from zoo.glue.progress import GridProgress, show_cell_bars
    from zoo.glue.runner import run_glue
    from zoo.train.lifecycle import stop_on_sigterm

    if is_distributed_launch():
        stop_on_sigterm()
        join_launch()
    main = is_main_rank()
    tasks = list(dict.fromkeys(cell.task.key for cell in cells))
    t0 = time.monotonic()
    if main:
        print(f"zoo glue {request.model}: {len(cells)} cell(s) over {', '.join(tasks)}, {run_mode_of(request)}; "
              f"records in {paths.results_dir() / 'glue' / cells[0].tag}", flush=True)
    single = request.workers == 1 and request.engine == "local" and not is_distributed_launch()
    show_cell_bars(main and single)
    progress = GridProgress(todo, bar=main and not single)

    def show(outcome: Any) -> None:
        if main:
            progress.cell_finished(outcome_line(progress.done + 1, todo, outcome), outcome.status)

    try:
        result = run_glue(request, cells, on_outcome=show)
    finally:
        progress.close()
    report = result.report
    if report is None:  # submitted to a cluster and not followed: the engine printed how to follow it
        return 0
    if main:
        print(f"\n{run_line(report)}, in {elapsed(t0)}")
        if request.grid:
            print_summary(result.summary, tasks)
        else:
            print_cell(cells[0])
        if result.submission is not None:
            where = result.submission.parent
            print(f"\nsubmission: {', '.join(result.files)} in {where} (zipped: {result.submission})")
    leave_launch()
    return 1 if report.count("failed") else 0


def run_line(report: Any) -> str:
    """'ran 2 cell(s) (2 ok, 0 failed), skipped 3 finished[, 1 running elsewhere]': cells found done when
    claimed (another grid finished them meanwhile) count as skipped, as those done before the start do."""
    ran = report.count("ok") + report.count("failed")
    line = (f"ran {ran} cell(s) ({report.count('ok')} ok, {report.count('failed')} failed), "
            f"skipped {report.skipped_done + report.count('done')} finished")
    busy = report.count("busy")
    return line + (f", {busy} running elsewhere" if busy else "")


def run_mode_of(request: Any) -> str:
    if request.engine != "local":
        return f"on {request.engine}"
    if is_distributed_launch():
        return f"each cell on {world_size()} processes"
    from zoo.glue.grid import gpu_ids

    gpus = gpu_ids()
    return f"{request.workers} worker(s) per GPU on {len(gpus)} GPU(s)" if gpus else f"{request.workers} worker(s)"
