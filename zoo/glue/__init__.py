"""GLUE fine-tuning: the task registry (tasks), data (read, tokenize once, cache), metrics, a cell as plain
data (cell), one cell's training (finetune), the grid (grid), selection rules and summaries (selection,
summary), the library call the CLI wraps (runner), progress display (progress), submission files (predict)."""
