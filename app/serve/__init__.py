"""The remote inference endpoint (Open Inference Protocol)."""
