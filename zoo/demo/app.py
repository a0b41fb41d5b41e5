"""The Gradio app of `zoo demo`: Leaderboard, Runs and Try it tabs over the records under results/.

`build(state)` lays out the gr.Blocks; `serve(host, port)` launches it and returns a `Server` to stop.
The app reads the results directory (`ZOO_RESULTS_DIR`) through zoo.leaderboard (`zoo.demo.views`) and
runs models through zoo.model.inference (`zoo.demo.playground`). It never contacts the internet: Gradio's
analytics and version check are off (`GRADIO_ANALYTICS_ENABLED=False`), there is no share tunnel, no
server-side rendering, no MCP server and no run history; the theme's fonts are the ones Gradio ships,
and the JavaScript is Gradio's own bundle, served by the app. Every handler returns its failure as a
one-line message (its last output), so the page never shows a stack trace and the server keeps serving.

API (what `gradio_client` calls): /leaderboard, /run, /describe, /fill_mask, /generate, /classify.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo import paths
from zoo.demo import playground, views
from zoo.errors import ZooError
from zoo.leaderboard.load import Board, load_board

OFFLINE_ENVIRONMENT = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
                       "GRADIO_SHARE": "False", "GRADIO_SSR_MODE": "False", "GRADIO_MCP_SERVER": "False"}
FILL_HEADERS = ["mask", "rank", "token", "probability", "sequence"]
EXAMPLE_SENTENCE = "Paris is the capital of [MASK]."
CSS = ".zoo-message p { color: #b42318; font-weight: 600; }"
SECTIONS = [("pretrain", "Pretraining", "No pretraining runs recorded yet."),
            ("finetune", "Continued training", "No continued-training runs recorded yet."),
            ("glue", "GLUE", "No GLUE runs recorded yet.")]


def offline_environment() -> None:
    """Gradio's settings that keep the app off the internet; set before Gradio is imported."""
    os.environ.update(OFFLINE_ENVIRONMENT)


def message(text: str) -> str:
    return f"⚠ {text}" if text else ""


class DemoState:
    """The records (reloaded on demand), where the heatmaps are drawn, and the loaded models."""

    def __init__(self, figure_dir: Path) -> None:
        self.figure_dir = figure_dir
        self.cache = playground.ModelCache()
        self.board = self.load()

    @staticmethod
    def load() -> Board:
        return load_board(paths.results_dir())

    @property
    def links(self) -> views.ServedLinks:
        return views.ServedLinks(self.board.root)

    # ------------------------------------------------------------------------------------------ handlers

    def leaderboard(self) -> tuple[Any, ...]:
        """Reload the records; the three tables, the runs to pick, and a status line."""
        import gradio as gr

        self.board = self.load()
        tables = views.leaderboard_tables(self.board, self.links)
        frames = [table_component(tables[name]) for name, _, _ in SECTIONS]
        headings = [section_heading(title, tables[name], empty) for name, title, empty in SECTIONS]
        counts = f"{len(self.board.lm)} LM runs, {len(self.board.cells)} GLUE cells from {shown_path(self.board.root)}"
        return (*frames, *headings, gr.Dropdown(choices=views.run_choices(self.board)), counts)

    def run(self, run_id: str | None) -> tuple[Any, ...]:
        empty = views.RunView(summary="", curve=views.loss_frame([]), recipe="")
        if not run_id:
            return view_outputs(empty, "pick a run")
        view, error = playground.attempt(lambda: views.run_view(self.board, run_id, self.links, self.figure_dir), empty)
        return view_outputs(view, message(error))

    def describe(self, name: str | None) -> str:
        text, error = playground.attempt(lambda: playground.describe(name or ""), "")
        return text or message(error)

    def fill_mask(self, name: str, text: str, top_k: float) -> tuple[dict[str, Any], str, str]:
        rows, error = playground.attempt(lambda: playground.fill_mask(self.cache, name, text, int(top_k)), [])
        data = [[row[h] for h in FILL_HEADERS] for row in rows]
        shown = [[f"{value:.4g}" if h == "probability" else str(value) for h, value in zip(FILL_HEADERS, row)]
                 for row in data]
        table = {"headers": FILL_HEADERS, "data": data,
                 "metadata": {"display_value": shown, "styling": [[""] * len(FILL_HEADERS)] * len(shown)}}
        return table, playground.best_filling(rows), message(error)

    def generate(self, name: str, prompt: str, max_new_tokens: float, temperature: float, top_p: float,
                 seed: float | None) -> tuple[str, str]:
        text, error = playground.attempt(lambda: playground.generate(
            self.cache, name, prompt, int(max_new_tokens), temperature, top_p,
            None if seed is None else int(seed)), "")
        return text, message(error)

    def classify(self, name: str, text: str, pair: str) -> tuple[dict[str, float] | str | None, str]:
        """Label -> probability for the gr.Label; a regression head's score as its text."""
        result, error = playground.attempt(lambda: playground.classify(self.cache, name, text, pair or ""), None)
        return (f"score {result:.3f}" if isinstance(result, float) else result), message(error)


def shown_path(path: Path) -> str:
    """`path` relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)


def view_outputs(view: views.RunView, note: str) -> tuple[Any, ...]:
    """The Runs tab's outputs; the GLUE parts show only for a model with grids, the curve only with points."""
    import gradio as gr

    return (view.summary, gr.LinePlot(value=view.curve, visible=not view.curve.empty),
            gr.Markdown(view.glue, visible=bool(view.glue)),
            gr.Gallery(value=view.heatmaps, visible=bool(view.heatmaps)), view.recipe, note)


def table_component(table: views.Table | None) -> Any:
    """A leaderboard table's value and column types; hidden when there is nothing to show."""
    import gradio as gr

    if table is None:
        return gr.Dataframe(value=None, visible=False)
    return gr.Dataframe(value=table.as_gradio(), datatype=table.datatype, visible=True)


def section_heading(title: str, table: views.Table | None, empty: str) -> str:
    return f"### {title}" + ("" if table is not None else f"\n\n_{empty}_")


# ---------------------------------------------------------------------------------------------- layout


def leaderboard_tab() -> tuple[Any, list[Any], list[Any], Any]:
    """The reload button, the three tables with their headings, and the status line."""
    import gradio as gr

    gr.Markdown("The tables of results/LEADERBOARD.md, from the same records: click a header to sort, a "
                "`cfg` link for the recipe that reproduces the row.")
    reload = gr.Button("Reload records", size="sm")
    counts = gr.Markdown()
    headings, frames = [], []
    for name, title, _ in SECTIONS:
        headings.append(gr.Markdown(f"### {title}"))
        frames.append(gr.Dataframe(interactive=False, wrap=True, elem_id=f"table-{name}"))
    return reload, frames, headings, counts


def runs_tab(state: DemoState) -> tuple[Any, ...]:
    import gradio as gr

    choices = views.run_choices(state.board)
    pick = gr.Dropdown(choices=choices, value=choices[0][1] if choices else None, label="Run", elem_id="run-pick")
    note = gr.Markdown(elem_classes="zoo-message")
    with gr.Row():
        summary = gr.Markdown()
        curve = gr.LinePlot(x="step", y="loss", color="split", label="Loss curves", height=340,
                            title="Loss per optimizer step: train (blue), eval (orange)", colors_in_legend=[],
                            color_map={"train": "#1f77b4", "eval": "#ff7f0e"}, elem_id="run-curve")
    glue = gr.Markdown()
    heatmaps = gr.Gallery(label="GLUE grids: dev score (%) per batch size × learning rate; red frame: chosen",
                          columns=3, height=780, object_fit="contain", format="png", elem_id="run-heatmaps")
    recipe = gr.Code(language="yaml", label="Recipe (zoo pretrain --recipe FILE reproduces the run)")
    outputs = [summary, curve, glue, heatmaps, recipe, note]
    pick.change(state.run, inputs=pick, outputs=outputs, api_name="run")
    return pick, outputs


def try_tab(state: DemoState) -> tuple[Any, Any]:
    """The model picker and its description, then the Fill mask, Generate and Classify panels."""
    import gradio as gr

    choices = playground.model_choices()
    model = gr.Dropdown(choices=choices, value=choices[0][1] if choices else None, allow_custom_value=True,
                        label="Model: a run id, checkpoint directory, registry name or hub id", elem_id="try-model")
    about = gr.Markdown(elem_id="try-about")
    model.change(state.describe, inputs=model, outputs=about, api_name="describe")
    with gr.Tab("Fill mask"):
        text = gr.Textbox(EXAMPLE_SENTENCE, label="Sentence with [MASK] (any number)", elem_id="fill-text")
        top_k = gr.Slider(1, 20, value=5, step=1, label="Top k per mask")
        fill = gr.Button("Fill", variant="primary", elem_id="fill-button")
        best = gr.Markdown(elem_id="fill-best")
        fill_note = gr.Markdown(elem_classes="zoo-message", elem_id="fill-message")
        table = gr.Dataframe(headers=FILL_HEADERS, interactive=False, wrap=True, elem_id="fill-table")
        fill.click(state.fill_mask, inputs=[model, text, top_k], outputs=[table, best, fill_note], api_name="fill_mask")
    with gr.Tab("Generate"):
        prompt = gr.Textbox("The history of", label="Prompt", elem_id="gen-prompt")
        with gr.Row():
            max_new = gr.Slider(1, 200, value=40, step=1, label="Max new tokens")
            temperature = gr.Slider(0.05, 2.0, value=0.8, step=0.05, label="Temperature")
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top p")
            seed = gr.Number(0, precision=0, label="Seed")
        run = gr.Button("Generate", variant="primary", elem_id="gen-button")
        gen_note = gr.Markdown(elem_classes="zoo-message", elem_id="gen-message")
        output = gr.Textbox(label="Text", lines=6, elem_id="gen-output")
        run.click(state.generate, inputs=[model, prompt, max_new, temperature, top_p, seed],
                  outputs=[output, gen_note], api_name="generate")
    with gr.Tab("Classify"):
        sentence = gr.Textbox(label="Sentence", elem_id="cls-text")
        pair = gr.Textbox(label="Second sentence (pair tasks: MRPC, RTE, ...; else empty)")
        go = gr.Button("Classify", variant="primary")
        cls_note = gr.Markdown(elem_classes="zoo-message")
        labels = gr.Label(label="Label and probabilities (the task's label names)")
        go.click(state.classify, inputs=[model, sentence, pair], outputs=[labels, cls_note], api_name="classify")
    return model, about


def build(state: DemoState) -> Any:
    """The gr.Blocks of the app; the tables and the first run fill in when a page loads."""
    import gradio as gr

    with gr.Blocks(title="zoo demo", analytics_enabled=False, fill_width=True) as blocks:
        gr.Markdown("# zoo: the model zoo\nRun records, leaderboards and the models to try. Nothing here "
                    "leaves this machine.")
        with gr.Tabs():
            with gr.Tab("Leaderboard", id="leaderboard"):
                reload, frames, headings, counts = leaderboard_tab()
            with gr.Tab("Runs", id="runs"):
                pick, run_outputs = runs_tab(state)
            with gr.Tab("Try it", id="try"):
                model, about = try_tab(state)
        tables = [*frames, *headings, pick, counts]
        reload.click(state.leaderboard, outputs=tables, api_name="leaderboard")
        blocks.load(state.leaderboard, outputs=tables, api_visibility="private").then(
            state.run, inputs=pick, outputs=run_outputs, api_visibility="private").then(
            state.describe, inputs=model, outputs=about, api_visibility="private")
    return blocks


# ---------------------------------------------------------------------------------------------- serving


@dataclass
class Server:
    blocks: Any
    url: str
    figures: tempfile.TemporaryDirectory

    def close(self) -> None:
        self.blocks.close()
        self.figures.cleanup()


def serve(host: str = "127.0.0.1", port: int = 7860, quiet: bool = True) -> Server:
    """Launch the app on host:port in background threads; `Server.close()` stops it."""
    offline_environment()
    import gradio as gr

    figures = tempfile.TemporaryDirectory(prefix="zoo-demo-")
    state = DemoState(Path(figures.name))
    blocks = build(state)
    blocks.queue(default_concurrency_limit=1)
    try:
        _, url, _ = blocks.launch(
            server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
            quiet=quiet, show_error=False, allowed_paths=[str(state.board.root), figures.name],
            ssr_mode=False, pwa=False, mcp_server=False, run_history=False, enable_monitoring=False,
            footer_links=["api"], theme=gr.themes.Default(), css=CSS)
    except OSError as exc:
        figures.cleanup()
        raise ZooError(f"cannot serve on {host}:{port} ({exc})") from None
    return Server(blocks, url, figures)
