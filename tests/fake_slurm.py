"""A fake Slurm for tests: sbatch runs the array tasks here, in the background, as Slurm would.

Run as `fake_slurm.py COMMAND ARGS...` through the sbatch/srun/sacct/squeue/scancel wrappers that
`tests/test_slurm.py`'s `fake_slurm` fixture puts on PATH; its state lives under $FAKE_SLURM_DIR."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_DIR"])
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def job_dir(job):
    return STATE / "jobs" / job


def set_state(job, index, state):
    (job_dir(job) / f"task-{index}").write_text(state)


def states(job):
    meta = json.loads((job_dir(job) / "meta.json").read_text())
    return meta, [(job_dir(job) / f"task-{i}").read_text() for i in range(meta["size"])]


def sbatch(args):
    script = Path(args[-1])
    text = script.read_text()
    counter = STATE / "counter"
    job = str(int(counter.read_text()) + 1 if counter.exists() else int(os.environ.get("FAKE_SLURM_FIRST", "1000")))
    counter.write_text(job)
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, re.M))
    array = re.fullmatch(r"0-(\d+)%(\d+)", flags.get("array", ""))
    size, parallel = (int(array.group(1)) + 1, int(array.group(2))) if array else (1, 1)
    job_dir(job).mkdir(parents=True)
    (job_dir(job) / "script.sh").write_text(text)
    meta = {"array": bool(array), "size": size, "parallel": parallel, "flags": flags}
    (job_dir(job) / "meta.json").write_text(json.dumps(meta))
    for i in range(size):
        set_state(job, i, "PENDING")
    if not os.environ.get("FAKE_SLURM_HOLD"):
        with open(job_dir(job) / "runner.err", "w") as runner_err:  # the runner keeps its own copy
            runner = subprocess.Popen([sys.executable, __file__, "_run", job], start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=runner_err)
        (job_dir(job) / "runner.pid").write_text(str(runner.pid))
    print(f"Submitted batch job {job}")


def run(job):
    meta, _ = states(job)
    flags = meta["flags"]
    nodes, per_node = int(flags.get("nodes", 1)), int(flags.get("ntasks-per-node", 1))
    todo, running = list(range(meta["size"])), {}
    while todo or running:
        while todo and len(running) < meta["parallel"]:
            i = todo.pop(0)
            env = dict(os.environ, SLURM_JOB_ID=str(int(job) + i), SLURM_NTASKS=str(nodes * per_node),
                       SLURM_JOB_NUM_NODES=str(nodes), SLURM_JOB_NODELIST="localhost",
                       SLURM_NTASKS_PER_NODE=str(per_node))
            if meta["array"]:
                env.update(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(i))
            if "cpus-per-task" in flags:
                env["SLURM_CPUS_PER_TASK"] = flags["cpus-per-task"]
            set_state(job, i, "RUNNING")
            running[i] = subprocess.Popen(["bash", str(job_dir(job) / "script.sh")], env=env)
        time.sleep(0.05)
        for i, process in list(running.items()):
            if process.poll() is not None:
                set_state(job, i, "COMPLETED" if process.returncode == 0 else "FAILED")
                del running[i]


def log_name(pattern, env, task):
    ids = {"%A": env.get("SLURM_ARRAY_JOB_ID", ""), "%a": env.get("SLURM_ARRAY_TASK_ID", ""),
           "%j": env["SLURM_JOB_ID"], "%t": str(task)}
    for tag, value in ids.items():
        pattern = pattern.replace(tag, value)
    return pattern


def srun(args):
    out = err = None
    while args[0].startswith("-"):
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            value = args.pop(0)
            out, err = (value, err) if flag == "--output" else (out, value)
    env = os.environ
    ntasks = int(env.get("SLURM_NTASKS", "1"))
    tasks = []
    for k in range(ntasks):
        task_env = dict(env, SLURM_PROCID=str(k), SLURM_LOCALID=str(k), SLURM_NODEID="0")
        with open(log_name(out, env, k), "a") as stdout, open(log_name(err, env, k), "a") as stderr:
            tasks.append(subprocess.Popen(args, env=task_env, stdout=stdout, stderr=stderr))
    codes = {}
    while len(codes) < ntasks:
        for k, task in enumerate(tasks):
            if k not in codes and task.poll() is not None:
                codes[k] = task.returncode
                if task.returncode:  # --kill-on-bad-exit
                    for other in tasks:
                        if other.poll() is None:
                            other.terminate()
        time.sleep(0.05)
    sys.exit(max(codes.values()))


def sacct(args):
    jobs = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job in jobs:
        if not job_dir(job).exists():
            continue
        meta, found = states(job)
        pending = [i for i, s in enumerate(found) if s == "PENDING"]
        for i, state in enumerate(found):
            if not meta["array"]:
                print(f"{job}|{state}|localhost")
                print(f"{job}.batch|{state}|localhost")
            elif state != "PENDING":
                print(f"{job}_{i}|{state}|localhost")
                print(f"{job}_{i}.batch|{state}|localhost")
        if meta["array"] and pending:  # as sacct shows them: one line for a range of pending tasks
            print(f"{job}_[{pending[0]}-{pending[-1]}%{meta['parallel']}]|PENDING|None assigned")


def squeue(args):
    job = args[args.index("-j") + 1]
    if not job_dir(job).exists():
        print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
        sys.exit(1)
    meta, found = states(job)
    for i, state in enumerate(found):
        if state not in TERMINAL:
            print(f"{job}_{i}|{state}" if meta["array"] else f"{job}|{state}")


def scancel(args):
    job = args[0].split("_")[0]
    pid = job_dir(job) / "runner.pid"
    if pid.exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid.read_text()), signal.SIGKILL)
    meta, found = states(job)
    for i, state in enumerate(found):
        if state not in TERMINAL:
            set_state(job, i, "CANCELLED")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    with open(STATE / "calls.log", "a") as log:
        log.write(json.dumps([command, *args]) + "\n")
    {"sbatch": sbatch, "_run": lambda a: run(a[0]), "srun": srun, "sacct": sacct, "squeue": squeue,
     "scancel": scancel}[command](args)
