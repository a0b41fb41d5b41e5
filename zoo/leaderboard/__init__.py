"""Leaderboards derived from run records: records -> rows -> display frames -> one renderer.

`zoo leaderboard` reads every finished record under results/ and writes results/LEADERBOARD.md, a GLUE
config index per fine-tuned model (results/glue/<model-tag>/INDEX.md) and PNG figures under
results/plots/; `--readme FILE` also replaces the tables between the marker comments of FILE. Nothing
here is edited by hand. The modules, in the order the data flows through them:

- text: display strings (numbers, durations, learning rates, percents), slugs, relative links, exact file I/O
- glue_view: GLUE task columns, the grid of each (model, task), each model's line, GLUE averages
- references: the published reference rows of results/reference/*.yaml (GLUE and pretraining)
- load: typed records (zoo.record.store) -> LM frame, GLUE cell rows, reference rows -> `Board`
- lm_view: which LM runs the tables list (the best of each model and corpus) and the reference rows beside them
- render: `render_table`, the one table renderer, and the markdown sections of LEADERBOARD.md
- glue_index: the per-model GLUE config index the GLUE table's `cfg` links point to
- figures: the PNG loss curves and heatmaps, and which of them the tables link
- readme: README markers (marked_spans, regenerate in place, stale check)
- outputs: write every output, or name each one that lags the records (`--check`)

Each module's docstring holds the conventions it implements (smoke and failed runs: load; the best run of
each model and corpus: lm_view; GLUE selection and averages: glue_view; links: text). Import the
submodules explicitly.
"""
