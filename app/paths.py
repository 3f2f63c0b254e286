"""Where shipped resources live (inside the source tree, next to the package)."""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
MODELS_DIR = RESOURCES / "models"
SAMPLES_DIR = RESOURCES / "samples"
SAMPLE_SLIDE = SAMPLES_DIR / "CMU-1-Small-Region.svs"
