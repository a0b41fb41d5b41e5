"""Several processes, one command line: zoo re-launches itself through the deepspeed launcher (or torchrun).

`zoo pretrain ... --nproc 2` resolves and checks the recipe once, then runs the same command line,
minus the launch flags, in every rank:

    python -m deepspeed.launcher.runner --no_local_rank --master_port P --num_gpus 2 --module zoo pretrain ...

The launcher sets RANK / LOCAL_RANK / WORLD_SIZE in each rank; `zoo.train.ranks.is_distributed_launch`
then turns DeepSpeed on, and `ZOO_LAUNCHED` marks the ranks so that none of them launches again.
A command that supports launching calls `add_launch_options(parser)` once and, after checking its
inputs, `maybe_relaunch(args)`: it returns None when the command should just run here, otherwise
the exit status of the whole launch.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ZooError
from zoo.train.ranks import free_port

LAUNCHED_ENV = "ZOO_LAUNCHED"
# launch flags and whether they take a value; they are removed from the ranks' command line
LAUNCH_FLAGS = {"--nproc": True, "--gpus": True, "--hostfile": True, "--nodes": True, "--master-port": True,
                "--launcher": True}
HOSTFILE_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")
DEFAULT_MULTINODE_PORT = 29500


@dataclass(frozen=True)
class LaunchPlan:
    """How many processes run where, and through which launcher."""

    procs_per_node: int | None  # None: every slot the hostfile lists
    hostfile: Path | None
    nodes: int | None
    master_port: int
    launcher: str = "deepspeed"
    single_host: bool = False  # a hostfile naming one machine: DeepSpeed launches locally, no ssh needed


def add_launch_options(parser: argparse.ArgumentParser) -> None:
    """--nproc/--gpus/--hostfile/--nodes/--master-port/--launcher for a command that can run multi-process."""
    group = parser.add_argument_group("multi-process launch (DeepSpeed; see README 'Multi-process and "
                                      "multi-node training')")
    group.add_argument("--nproc", type=int, metavar="N",
                       help="run N processes on this machine (one per GPU on a GPU machine, gloo on CPU)")
    group.add_argument("--gpus", type=int, metavar="N", help="use N GPUs on each machine, one process per GPU")
    group.add_argument("--hostfile", metavar="FILE",
                       help="DeepSpeed hostfile, one 'HOST slots=N' line per machine (several machines)")
    group.add_argument("--nodes", type=int, metavar="N", help="use the first N machines of --hostfile")
    group.add_argument("--master-port", type=int, metavar="PORT",
                       help=f"rendezvous port (default: a free port here; {DEFAULT_MULTINODE_PORT} across machines)")
    group.add_argument("--launcher", choices=("deepspeed", "torchrun"), default="deepspeed",
                       help="process launcher (torchrun: this machine only); default deepspeed")


def launch_requested(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) is not None for name in ("nproc", "gpus", "hostfile", "nodes"))


def inside_launch() -> bool:
    """True in a rank: started by zoo's launch, or by a launcher the user ran."""
    return LAUNCHED_ENV in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def read_hostfile(path: Path) -> dict[str, int]:
    """Hosts and their slots from a DeepSpeed hostfile; a clear error for a missing or malformed one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ZooError(f"--hostfile {path}: cannot read it ({exc.strerror})") from None
    hosts: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = HOSTFILE_LINE.match(text)
        if match is None:
            raise ZooError(f"--hostfile {path} line {number}: expected 'HOST slots=N', got {text!r}")
        if match.group(1) in hosts:
            raise ZooError(f"--hostfile {path} line {number}: host {match.group(1)!r} listed twice")
        hosts[match.group(1)] = int(match.group(2))
    if not hosts:
        raise ZooError(f"--hostfile {path}: no 'HOST slots=N' line")
    return hosts


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ZooError(f"{flag} must be at least 1, got {value}")


def launch_plan(args: argparse.Namespace) -> LaunchPlan:
    """The checked launch the flags ask for, or a one-line ZooError."""
    for flag in ("nproc", "gpus", "nodes"):
        _positive(getattr(args, flag, None), f"--{flag}")
    if args.nproc is not None and args.gpus is not None:
        raise ZooError("give --nproc or --gpus, not both (--gpus N is --nproc N with N GPUs required)")
    hostfile = Path(args.hostfile) if args.hostfile else None
    if args.gpus is not None and hostfile is None and args.gpus > gpu_count():  # other machines: not checkable
        raise ZooError(f"--gpus {args.gpus}: this machine has {gpu_count()} GPU(s); use --nproc for CPU processes")
    if args.nodes is not None and hostfile is None:
        raise ZooError("--nodes needs --hostfile (the machines to choose from)")
    multinode = False
    if hostfile is not None:
        hosts = read_hostfile(hostfile)
        if args.nodes is not None and args.nodes > len(hosts):
            raise ZooError(f"--nodes {args.nodes}: {hostfile} lists only {len(hosts)} machine(s)")
        multinode = min(args.nodes or len(hosts), len(hosts)) > 1
    if args.launcher == "torchrun" and hostfile is not None:
        raise ZooError("--launcher torchrun runs on this machine only; use the deepspeed launcher with --hostfile")
    port = args.master_port or (DEFAULT_MULTINODE_PORT if multinode else free_port())
    return LaunchPlan(args.nproc or args.gpus, hostfile, args.nodes, port, args.launcher,
                      single_host=hostfile is not None and not multinode)


def rank_arguments(argv: Sequence[str]) -> list[str]:
    """The command line each rank runs: `argv` without the launch flags (and their values)."""
    result: list[str] = []
    items = list(argv)
    while items:
        item = items.pop(0)
        flag = item.split("=", 1)[0]
        if flag in LAUNCH_FLAGS:
            if LAUNCH_FLAGS[flag] and "=" not in item and items:
                items.pop(0)
            continue
        result.append(item)
    return result


def launcher_command(plan: LaunchPlan, program: Sequence[str], module: bool = True) -> list[str]:
    """The launcher invocation that runs `program` (a module and its arguments, or a script) in every rank."""
    if plan.launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                   "--nproc_per_node", str(plan.procs_per_node or 1), "--master_port", str(plan.master_port)]
        return command + (["-m"] if module else []) + list(program)
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--no_local_rank",
               "--master_port", str(plan.master_port)]
    if plan.hostfile is not None:
        command += ["--hostfile", str(plan.hostfile)]
    if plan.single_host:  # the runner would otherwise ssh into that one host to check it and find its address
        command += ["--no_ssh_check", "--master_addr", "127.0.0.1"]
    if plan.nodes is not None:
        command += ["--num_nodes", str(plan.nodes)]
    if plan.procs_per_node is not None:
        command += ["--num_gpus", str(plan.procs_per_node)]
    return command + (["--module"] if module else []) + list(program)


def launch_environment(plan: LaunchPlan) -> dict[str, str]:
    """The ranks' environment: the marker, and this machine's cores shared out among its processes
    (else each rank's torch uses every core, and N ranks oversubscribe them N times)."""
    env = {**os.environ, LAUNCHED_ENV: "1"}
    if plan.procs_per_node and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // plan.procs_per_node))
    return env


def run_launch(command: Sequence[str], env: dict[str, str]) -> int:
    """Run the launcher with the ranks' environment; its exit status.

    On Ctrl-C the ranks (same process group) receive the interrupt themselves and write their
    'interrupted' record; the launcher is given time to collect them before being stopped.
    """
    print(f"zoo: launching: {shlex.join(command)}", file=sys.stderr, flush=True)
    process = subprocess.Popen(list(command), env=env)
    try:
        status = process.wait()
    except KeyboardInterrupt:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            process.wait()
        raise
    if status != 0:
        print(f"zoo: error: a process of the launch failed (launcher exit status {status}); "
              "rank 0's record says why", file=sys.stderr)
    return status if 0 <= status <= 125 else 1  # the launcher reports a killed rank as 247 (-9)


def maybe_relaunch(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int | None:
    """Re-run this zoo command in several processes when launch flags ask for it.

    Returns None when the command should run in this process (no launch flags, or already a rank),
    else the exit status of the launch. `argv` is the command line after `zoo` (default: sys.argv[1:]).
    """
    if not launch_requested(args) or inside_launch():
        return None
    plan = launch_plan(args)
    arguments = rank_arguments(sys.argv[1:] if argv is None else argv)
    check_same_command(args, arguments)
    return run_launch(launcher_command(plan, ["zoo", *arguments]), launch_environment(plan))


def check_same_command(args: argparse.Namespace, arguments: Sequence[str]) -> None:
    """The ranks must run exactly the command that was parsed here (guards a wrong `argv`); `args` carries
    the parser's own re-parse function (`zoo.cli.build_parser` sets it)."""
    launch_keys = {"nproc", "gpus", "hostfile", "nodes", "master_port", "launcher"}
    try:
        parsed = args.parse_command_line(list(arguments))
    except SystemExit:
        parsed = argparse.Namespace()
    expected = {k: v for k, v in vars(args).items() if k not in launch_keys}
    if {k: v for k, v in vars(parsed).items() if k not in launch_keys} != expected:
        raise ZooError(f"cannot re-launch {shlex.join(arguments)!r}: it is not the command being run; "
                       "pass its arguments as maybe_relaunch(args, argv)")
