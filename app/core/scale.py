"""Scale bar and magnification arithmetic, kept apart from painting so it can be tested."""

from __future__ import annotations

import math


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above `target` (> 0)."""
    exp = math.floor(math.log10(target))
    for m in (5, 2, 1):
        v = m * 10.0**exp
        if v <= target:
            return v
    return 10.0**exp


def format_length_um(um: float) -> str:
    if um >= 1000:
        mm = um / 1000
        return f"{mm:g} mm"
    return f"{um:g} µm"


def scale_bar(mpp: float | None, zoom: float, target_px: float = 120) -> tuple[float, str]:
    """(bar length in device pixels, label) for a view at `zoom` device px per level-0 px.
    Without an mpp the bar measures level-0 pixels."""
    if mpp:
        um = nice_length(target_px * mpp / zoom)
        return um * zoom / mpp, format_length_um(um)
    px = nice_length(target_px / zoom)
    return px * zoom, f"{px:g} px"


def magnification(objective_power: float | None, mpp: float | None, zoom: float) -> float | None:
    """Apparent objective magnification on screen: the scan objective (or 10 µm/px ÷ mpp, the
    usual convention when the objective is unrecorded) times the zoom."""
    if objective_power:
        return objective_power * zoom
    if mpp:
        return 10.0 / mpp * zoom
    return None
