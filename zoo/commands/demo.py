"""`zoo demo`: browse the zoo and try its models in a web app (Gradio, the optional extra `zoo[demo]`).

Gradio takes seconds to import, so it is imported only when the command runs, never for `zoo --help`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import threading
from pathlib import Path

from zoo.errors import ZooError

CLOSE_WAIT_S = 10.0

DESCRIPTION = """\
Serve a web app over the run records: Leaderboard (the tables of results/LEADERBOARD.md, sortable,
each row linking its recipe), Runs (loss curves, tokens/s, hardware and recipe of a run; a fine-tuned
model's GLUE grids as heatmaps with the chosen cell framed) and Try it (fill-mask, generation or GLUE
classification with any run, checkpoint directory or registry model). It listens on 127.0.0.1 unless
--host says otherwise and never contacts the internet. Ctrl-C stops it. Needs: pip install -e '.[demo]'."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="browse the zoo and try its models in a web app (needs zoo[demo])",
                            description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--results", type=Path, metavar="DIR",
                        help="results directory to show (default: ZOO_RESULTS_DIR, else ./results)")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    if args.results is not None:
        if not args.results.is_dir():
            raise ZooError(f"--results {args.results}: no such directory")
        os.environ["ZOO_RESULTS_DIR"] = str(args.results.resolve())
    if not 0 < args.port < 65536:
        raise ZooError(f"--port {args.port}: not a port number (1-65535)")
    if importlib.util.find_spec("gradio") is None:
        raise ZooError("zoo demo needs Gradio: pip install -e '.[demo]'")
    from zoo import paths
    from zoo.demo.app import serve

    server = serve(args.host, args.port)
    print(f"zoo demo: {paths.results_dir()} on {server.url} (Ctrl-C stops it)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"zoo demo: listening on {args.host}: other machines can reach it", flush=True)
    wait_for_stop()
    # Gradio's close joins its server threads; a request still in flight can hold that for long, and
    # Ctrl-C must stop the command all the same: the threads are daemons and end with the process.
    closer = threading.Thread(target=server.close, daemon=True)
    closer.start()
    closer.join(CLOSE_WAIT_S)
    print("zoo demo: stopped" if not closer.is_alive() else
          f"zoo demo: stopped (the server had not finished closing after {CLOSE_WAIT_S:g} s)", flush=True)
    return 0


def wait_for_stop() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM; the previous handlers are restored."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
