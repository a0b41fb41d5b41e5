"""`zoo demo`: the app launched in-process, driven through gradio_client and a real headless Chromium.

The app shows the committed results/ (read only) and tiny models saved here; nothing may leave loopback:
the browser's requests are intercepted and every socket the test process opens is audited. Needs the
`demo` extra (Gradio), Playwright and Debian's chromium (.ci/run installs them); skipped without them.
Screenshots go to a temporary folder, or to $ZOO_DEMO_SCREENSHOTS (`docs/demo` regenerates the README's).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import urlopen

import pytest

from tests.conftest import TINY_BERT, TINY_GPT2, save_tiny_bert
from tests.markdown_tables import LINK, cell_text, markdown_rows

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
CHROMIUM = Path("/usr/bin/chromium")
GLUE_RUN = "bert-tiny-wikipedia-20261122-161122"  # a committed pretraining run with GLUE grids
SENTENCE = "Paris is the capital of [MASK]."
needs_gradio = pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                                  reason="the demo needs Gradio: pip install -e '.[demo]'")

# ---------------------------------------------------------------------------------------------- no internet

OUTBOUND: list[str] = []
AUDITING = {"on": False}


def _audit(event: str, args: tuple) -> None:
    """Every socket the test process connects while the demo tests run must stay on loopback."""
    if event != "socket.connect" or not AUDITING["on"] or not isinstance(args[1], tuple):
        return
    host = str(args[1][0])
    try:
        loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        OUTBOUND.append(host)


sys.addaudithook(_audit)


def is_loopback_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname in ("127.0.0.1", "localhost", "::1")


# ---------------------------------------------------------------------------------------------- fixtures


@dataclass
class Models:
    checkpoints: Path
    bert: str  # run ids under `checkpoints`
    gpt2: str
    classifier: str  # a saved GLUE cell's directory (RTE)
    regressor: str  # one of STS-B
    corrupt: str


def make_models(root: Path) -> Models:
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    from zoo.data.tokenization import load_tokenizer

    checkpoints = root / "checkpoints"
    save_tiny_bert(checkpoints / "bert-tiny-demo" / "final")
    tokenizer = load_tokenizer("gpt2")
    gpt2 = checkpoints / "gpt2-demo" / "final"
    GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, **TINY_GPT2)).save_pretrained(gpt2)
    tokenizer.save_pretrained(gpt2)
    cell = checkpoints / "glue" / "bert-tiny-demo" / "rte" / "bs16-lr1e-04-s42-demo"
    bert_tokenizer = load_tokenizer("bert-base-uncased")
    BertForSequenceClassification(BertConfig(vocab_size=bert_tokenizer.vocab_size, num_labels=2,
                                             **TINY_BERT)).save_pretrained(cell)
    bert_tokenizer.save_pretrained(cell)
    stsb = checkpoints / "glue" / "bert-tiny-demo" / "stsb" / "bs16-lr1e-04-s42-demo"
    BertForSequenceClassification(BertConfig(vocab_size=bert_tokenizer.vocab_size, num_labels=1,
                                             problem_type="regression", **TINY_BERT)).save_pretrained(stsb)
    bert_tokenizer.save_pretrained(stsb)
    corrupt = save_tiny_bert(root / "corrupt")
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return Models(checkpoints, "bert-tiny-demo", "gpt2-demo", str(cell), str(stsb), str(corrupt))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return make_models(tmp_path_factory.mktemp("demo-models"))


@pytest.fixture(scope="module")
def server(models: Models) -> Iterator[str]:
    """The app on a free loopback port over the committed results and the tiny models; its URL."""
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("the demo needs Gradio: pip install -e '.[demo]'")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ZOO_RESULTS_DIR", str(RESULTS))
        env.setenv("ZOO_CHECKPOINT_DIR", str(models.checkpoints))
        AUDITING["on"] = True
        from zoo.demo.app import serve

        running = serve("127.0.0.1", free_port())
        try:
            yield running.url
        finally:
            running.close()
            AUDITING["on"] = False
    assert OUTBOUND == [], f"the demo tests connected outside loopback: {sorted(set(OUTBOUND))}"


@pytest.fixture
def client(server: str, models: Models, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ZOO_RESULTS_DIR", str(RESULTS))  # over conftest's per-test folders
    monkeypatch.setenv("ZOO_CHECKPOINT_DIR", str(models.checkpoints))
    from gradio_client import Client

    return Client(server, verbose=False)


# ---------------------------------------------------------------------------------------------- helpers

def shown_rows(table: dict) -> list[list[str]]:
    return [list(row) for row in table["value"]["metadata"]["display_value"]]


# ---------------------------------------------------------------------------------------------- no Gradio


def test_demo_help_does_not_import_gradio_or_torch() -> None:
    probe = ("import sys\nfrom zoo.cli import main\ntry:\n    main(['demo', '--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'gradio', 'torch', 'transformers'}), "
             "file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "--results DIR" in result.stdout and "127.0.0.1" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_views_hold_the_markdown_rows_with_sortable_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.demo import views
    from zoo.leaderboard.load import load_board

    monkeypatch.setenv("ZOO_RESULTS_DIR", str(RESULTS))
    board = load_board(RESULTS)
    table = views.lm_table(board, "pretrain", views.ServedLinks(RESULTS))
    assert table is not None
    column = table.headers.index("Perplexity")
    shown = [float(row[column].replace(",", "")) for row in table.display]
    assert [row[column] for row in table.values] == pytest.approx(shown, abs=0.005)
    assert views.leading_number("81.5/69.1") == 81.5 and views.leading_number("42.8 (5/9 tasks)") == 42.8
    assert views.leading_number("—") is None and views.leading_number("1,426.89") == 1426.89


# ---------------------------------------------------------------------------------------------- the API


@needs_gradio
def test_leaderboard_rows_equal_the_markdown_leaderboard(client, server: str) -> None:
    pretrain, finetune, glue, *_ = client.predict(api_name="/leaderboard")
    markdown = (RESULTS / "LEADERBOARD.md").read_text(encoding="utf-8")
    for name, table in (("Pretraining", pretrain), ("GLUE", glue)):
        expected = [[cell_text(c, RESULTS) for c in row] for row in markdown_rows(markdown, name)]
        assert expected, name
        assert [[cell_text(c, RESULTS) for c in row] for row in shown_rows(table)] == expected, name
    assert finetune["visible"] is False and "_No continued-training runs" in markdown
    cfg = LINK.findall(pretrain["value"]["data"][0][-1])[0][1]
    with urlopen(server.rstrip("/") + cfg, timeout=30) as response:  # the cfg link serves the recipe
        assert response.read() == Path(unquote(cfg.removeprefix("/gradio_api/file="))).read_bytes()


@needs_gradio
def test_runs_show_curves_throughput_recipe_and_glue_grids(client) -> None:
    from zoo.leaderboard.glue_view import GLUE_TASKS

    summary, curve, cells, gallery, recipe, note = client.predict(GLUE_RUN, api_name="/run")
    record = json.loads((RESULTS / "pretrain" / GLUE_RUN / "run.json").read_text())
    assert note == ""
    assert f"**tokens/s:** {record['tokens_per_s']:,.0f}" in summary and "**hardware:** CPU x2" in summary
    points = {(row[2], row[0]): row[1] for row in curve["value"]["data"]}
    history = {("train" if "loss" in h else "eval", h["step"]): h.get("loss", h.get("eval_loss"))
               for h in record["history"] if "loss" in h or "eval_loss" in h}
    assert points.keys() == history.keys() and all(points[k] == pytest.approx(history[k]) for k in points)
    assert recipe == (RESULTS / "pretrain" / GLUE_RUN / "recipe.yaml").read_text().rstrip("\n")  # as gr.Code keeps it
    summary_json = json.loads((RESULTS / "glue" / GLUE_RUN / "summary.json").read_text())
    chosen = {m.group(1): m for m in (re.search(r"^(.*): chosen: batch size (\d+), lr ([\d.e-]+)$", item["caption"])
                                      for item in gallery["value"]) if m}
    assert len(chosen) == len(gallery["value"]) == len(summary_json["tasks"])
    for task, grid in summary_json["tasks"].items():  # as the grid's own summary chose them
        best, match = grid["best"], chosen[GLUE_TASKS[task].label]
        assert best["run_id"] in cells["value"]
        assert (int(match.group(2)), float(match.group(3))) == (best["batch_size"], pytest.approx(best["lr"]))
    for item in gallery["value"]:
        assert Path(item["image"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_gradio
def test_fill_mask_gives_k_words_per_mask_with_probabilities(client, models: Models) -> None:
    table, best, note = client.predict(models.bert, "Paris is the capital of [MASK] and <mask> is too.", 4,
                                       api_name="/fill_mask")
    assert note == ""
    rows = table["data"]
    assert [(r[0], r[1]) for r in rows] == [(m, k) for m in (1, 2) for k in (1, 2, 3, 4)]
    for mask in (1, 2):
        probabilities = [r[3] for r in rows if r[0] == mask]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0 < p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-6
    top = [r for r in rows if r[1] == 1]
    assert best.startswith("Top prediction: ") and all(f"**{r[2]}**" in best for r in top)
    about = client.predict(models.bert, api_name="/describe")
    assert about.startswith("`bert-tiny-demo` is a masked language model: Fill mask.") and "`<mask>`" in about
    assert client.predict(models.classifier, api_name="/describe").endswith("is a sequence classifier: Classify.")


@needs_gradio
def test_generation_is_seeded_and_classification_names_the_tasks_labels(client, models: Models) -> None:
    first = client.predict(models.gpt2, "The history of", 6, 0.9, 0.95, 7, api_name="/generate")
    again = client.predict(models.gpt2, "The history of", 6, 0.9, 0.95, 7, api_name="/generate")
    assert first == again and first[1] == "" and first[0].startswith("The history of") and first[0] != "The history of"
    labels, note = client.predict(models.classifier, "A man is playing.", "Someone plays.", api_name="/classify")
    assert note == ""
    confidences = {c["label"]: c["confidence"] for c in labels["confidences"]}
    assert set(confidences) == {"entailment", "not_entailment"}  # RTE's, from the cell's directory
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-5)
    score, note = client.predict(models.regressor, "A man is playing.", "Someone plays.", api_name="/classify")
    assert note == "" and re.fullmatch(r"score -?\d+\.\d{3}", score["label"]), score


@needs_gradio
def test_bad_input_is_one_line_in_the_page_and_the_server_keeps_serving(client, models: Models) -> None:
    cases = [
        ("/fill_mask", (models.bert, "No mask in this sentence.", 3), r"no mask in .*write \[MASK\]"),
        ("/fill_mask", (models.gpt2, SENTENCE, 3), r"is a causal language model; this panel needs a masked"),
        ("/generate", (models.bert, "Hello", 5, 1.0, 1.0, 0), r"is a masked language model; this panel needs a causal"),
        ("/generate", (models.gpt2, "   ", 5, 1.0, 1.0, 0), r"^⚠ empty prompt"),
        ("/fill_mask", (models.corrupt, SENTENCE, 3), r"model\.safetensors is not a readable checkpoint"),
        ("/fill_mask", (str(models.checkpoints / "missing"), SENTENCE, 3), r"no such checkpoint directory"),
        ("/classify", (models.bert, "A sentence.", ""), r"needs a sequence classifier"),
    ]
    for api, args, pattern in cases:
        note = client.predict(*args, api_name=api)[-1]
        assert note.startswith("⚠ ") and "\n" not in note and "Traceback" not in note, (api, args, note)
        assert re.search(pattern, note), (api, args, note)
    table, _, note = client.predict(models.bert, SENTENCE, 2, api_name="/fill_mask")
    assert note == "" and len(table["data"]) == 2


# ---------------------------------------------------------------------------------------------- a browser


def browser_or_skip():
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("no Playwright: pip install playwright (never `playwright install`: Debian's chromium is used)")
    from playwright.sync_api import sync_playwright

    return sync_playwright


@needs_gradio
def test_a_real_browser_fills_the_mask_and_nothing_leaves_loopback(client, server: str, tmp_path: Path) -> None:
    sync_playwright = browser_or_skip()
    shots = Path(os.environ.get("ZOO_DEMO_SCREENSHOTS") or tmp_path)
    shots = shots if shots.is_absolute() else REPO / shots
    shots.mkdir(parents=True, exist_ok=True)
    requested, refused = [], []

    def route(route, request) -> None:
        requested.append(request.url)
        if is_loopback_url(request.url):
            route.continue_()
        else:
            refused.append(request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1700, "height": 900})
        page.route("**/*", route)
        page.goto(server)
        table = page.locator("#table-pretrain")
        table.locator("a:visible").filter(has_text="bert-mini").first.wait_for()
        page.screenshot(path=str(shots / "leaderboard.png"), full_page=True)
        header = table.get_by_role("columnheader", name="Perplexity").first
        header.hover()
        header.locator("button:visible").last.click()  # the column's menu
        page.get_by_text("Sort descending").first.click()
        page.wait_for_timeout(300)
        sorted_rows = [[cell.strip() for cell in row.locator("[role=gridcell]").all_inner_texts()]
                       for row in table.locator("[role=row]:visible").all()[1:]]

        page.get_by_role("tab", name="Runs").click()
        page.locator("#run-pick input").click()
        page.get_by_role("option", name=re.compile(GLUE_RUN)).click()
        page.locator("#run-curve canvas, #run-curve svg").first.wait_for()
        page.wait_for_function("() => { const imgs = [...document.querySelectorAll('#run-heatmaps img')];"
                               " return imgs.length >= 5 && imgs.every(i => i.complete && i.naturalWidth > 0); }")
        page.get_by_text("tokens/s").first.wait_for()
        page.wait_for_timeout(500)  # the chart's transition
        page.screenshot(path=str(shots / "runs.png"), full_page=True)

        page.get_by_role("tab", name="Try it").click()
        page.locator("#fill-text textarea").fill(SENTENCE)
        page.locator("#fill-button").click()
        page.locator("#fill-best").get_by_text("Top prediction").wait_for()
        shown = page.locator("#fill-best").inner_text()
        page.screenshot(path=str(shots / "try-it.png"), full_page=True)
        browser.close()

    pretrain = client.predict(api_name="/leaderboard")[0]["value"]
    column = pretrain["headers"].index("Perplexity")
    by_number = sorted(pretrain["metadata"]["display_value"], key=lambda row: -float(row[column].replace(",", "")))
    assert [row[column] for row in sorted_rows] == [row[column] for row in by_number], sorted_rows
    top = client.predict("bert-tiny-demo", SENTENCE, 5, api_name="/fill_mask")[0]["data"][0][2]
    assert shown.startswith(f"Top prediction: {top} ("), (shown, top)
    assert requested and refused == [], f"requests outside loopback: {refused}"
    assert all((shots / name).stat().st_size > 10_000 for name in ("leaderboard.png", "runs.png", "try-it.png"))


# ---------------------------------------------------------------------------------------------- the command


@needs_gradio
def test_zoo_demo_prints_its_url_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "ZOO_RESULTS_DIR": str(RESULTS), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "zoo", "demo", "--port", str(port)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        assert f"on http://127.0.0.1:{port}/ (Ctrl-C stops it)" in line, line
        with urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"zoo demo" in response.read()
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert output.strip().splitlines()[-1] == "zoo demo: stopped" and "Traceback" not in output


def test_zoo_demo_bad_options_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from zoo.cli import main

    assert main(["demo", "--results", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"zoo: error: --results {tmp_path / 'missing'}: no such directory"
    started = time.monotonic()
    assert main(["demo", "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "zoo: error: --port 70000: not a port number (1-65535)"
    assert time.monotonic() - started < 5  # refused before Gradio is imported
