"""The settings that shape a batch's outlines, kept beside summary.csv (batch-settings.json), so a
re-run into the same --out folder with other settings is refused instead of reporting the old
results as done: resuming is only resuming when the outlines would be made the same way."""

from __future__ import annotations

import json
from pathlib import Path

from app.core.annotations import write_text_atomic
from app.errors import DelineoError

SETTINGS_NAME = "batch-settings.json"

# What each setting is called in the refusal, in the order it is listed.
LABELS = {
    "engine": "--engine",
    "model": "--model",
    "model_version": "model version",
    "precision": "--precision",
    "threshold": "--threshold",
    "min_area_um2": "--min-area",
    "mpp": "--mpp",
    "region": "region",
    "exhaustive": "--exhaustive",
    "likelihood": "--likelihood",
}
# What an unset setting means, as the refusal says it.
UNSET = {
    "threshold": "the model's",
    "mpp": "the slide's",
    "precision": "the server's",
    "model": "the default",
}


class BatchSettingsError(DelineoError):
    """The --out folder holds results made with other settings, or its settings file is unreadable."""


def outline_settings(
    *,
    engine: str,
    model: str | None,
    model_version: str | None,
    precision: str | None,
    threshold: float | None,
    min_area_um2: float,
    mpp: float | None,
    region_dir: Path | None,
    exhaustive: bool,
    likelihood: bool,
) -> dict:
    """The settings as stored: plain JSON values, one per entry of LABELS."""
    return {
        "engine": engine,
        "model": model,
        "model_version": model_version,
        "precision": precision,
        "threshold": threshold,
        "min_area_um2": float(min_area_um2),
        "mpp": mpp,
        "region": f"regions from {region_dir}" if region_dir else "whole slide",
        "exhaustive": bool(exhaustive),
        "likelihood": bool(likelihood),
    }


def read_settings(folder: Path) -> dict | None:
    """The settings an earlier batch in `folder` ran with; None for a folder without them (new,
    or made before they were kept)."""
    path = Path(folder) / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BatchSettingsError(
            f"{path}: cannot read the settings of the earlier batch ({e}); give a new --out folder, "
            "or --redo to run every slide again"
        ) from None
    if not isinstance(data, dict):
        raise BatchSettingsError(
            f"{path}: not a settings file Delineo wrote; give a new --out folder, or --redo to run every "
            "slide again"
        )
    return data


def differences(old: dict, new: dict) -> list[str]:
    """'--threshold the model's -> 0.8' for each setting both know and that differs."""
    out = []
    for key, label in LABELS.items():
        if key in old and key in new and old[key] != new[key]:
            out.append(f"{label} {_shown(key, old[key])} -> {_shown(key, new[key])}")
    return out


def check_resumable(folder: Path, new: dict, has_results: bool) -> None:
    """Refuses, naming what differs, when `folder` holds results made with other settings."""
    old = read_settings(folder)
    if old is None or not has_results:
        return
    changed = differences(old, new)
    if changed:
        raise BatchSettingsError(
            f"--out {folder} holds results made with other settings ({'; '.join(changed)}); give a new "
            "--out folder, or add --redo to run every slide again with these settings"
        )


def save_settings(folder: Path, settings: dict) -> None:
    write_text_atomic(Path(folder) / SETTINGS_NAME, json.dumps(settings, indent=2) + "\n")


def _shown(key: str, value) -> str:
    if value is None:
        return UNSET.get(key, "none")
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
