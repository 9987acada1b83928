"""Integrations with the training loops people use: `gradwatch.integrations.lightning` (PyTorch
Lightning) and `gradwatch.integrations.transformers` (Hugging Face Trainer). Each is a callback
that calls `gradwatch.connect()` and `Run.watch()`, the same path as your own loop (docs/integrations.md)."""
