"""GLUE fine-tuning: task registry (tasks), metrics, data (read, tokenize once, cache), one cell
(finetune), the resumable parallel grid and its summary (grid), and submission files (predict)."""
