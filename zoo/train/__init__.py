"""Training: the run lifecycle, the shared HF Trainer wiring, LM training, evaluation, DeepSpeed and launches."""
