"""What the window says about a finished run, in the words the CLI uses, so a pathologist
reads the same numbers in both."""

from __future__ import annotations


def tiles_summary(result) -> str:
    """What a run did, in the CLI's words: tiles at full resolution, those that kept the coarse
    answer, the coarse pass's own tiles, background skipped (they add up to the progress bar's
    count)."""
    glass = result.tiles_skipped - result.refine_skipped
    if result.coarse_tiles:
        return (
            f"{result.tiles_done} tiles at full resolution, {result.refine_skipped} kept the coarse "
            f"answer, {result.coarse_tiles} coarse tile(s), {glass} background"
        )
    return f"{result.tiles_done} tiles, {glass} background"


def run_summary(result, outlines: int, replaced: int) -> str:
    """The status line after a run: what the pathologist sees first (outlines, what they
    replaced), then the time and the tiles (the line's tooltip holds it all when it is cut)."""
    what = "Cancelled, kept" if result.cancelled else "Kept" if result.pending else "Delineated"
    text = f"{what} {outlines} outline(s)"
    if replaced > 0:
        text += f", replacing {replaced} earlier one(s)"
    return f"{text} · {result.seconds:.1f} s · {tiles_summary(result)}"
