"""Where shipped resources live: next to the package in a source tree, inside the bundle when
frozen by PyInstaller (`sys._MEIPASS`, packaging/delineo.spec puts them there)."""

from __future__ import annotations

import sys
from pathlib import Path

FROZEN = bool(getattr(sys, "frozen", False)) and hasattr(sys, "_MEIPASS")


def _resources() -> Path:
    if FROZEN:
        return Path(sys._MEIPASS) / "resources"  # type: ignore[attr-defined]
    return Path(__file__).resolve().parents[1] / "resources"


RESOURCES = _resources()
MODELS_DIR = RESOURCES / "models"
SAMPLES_DIR = RESOURCES / "samples"
SAMPLE_SLIDE = SAMPLES_DIR / "CMU-1-Small-Region.svs"
FONTS_DIR = RESOURCES / "fonts"


def user_models_dir() -> Path:
    """Models a user installed (`delineo model add`): per user, so no admin rights are needed;
    a name there takes precedence over a shipped model of the same name."""
    from app.logs import data_dir

    return data_dir() / "models"
