"""`zoo demo`: the run records as a web app (Gradio, the optional extra `zoo[demo]`), and the models to try.

- `zoo.demo.views`: records -> the tables, curves, heatmaps and summaries the app shows; plain data,
  no Gradio and no torch, built on zoo.leaderboard (the same rows as results/LEADERBOARD.md).
- `zoo.demo.playground`: the "Try it" tab's work: which models there are, what each can do (fill-mask,
  generation, GLUE classification) and the one-line messages for bad input; torch only when a model runs.
- `zoo.demo.app`: the Gradio Blocks and how they are served (loopback by default, nothing fetched from
  the internet). Only this module imports Gradio, and only `zoo demo` imports it.
"""
