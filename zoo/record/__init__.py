"""Run records: the typed schema, the one writer and reader, and the environment a run records."""
