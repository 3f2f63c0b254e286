"""The rings along the pixel edges of a binary mask, traced in NumPy.

Every outline Delineo draws is a union of whole model (or thumbnail) pixels, so its exact
boundary is a set of pixel edges: each edge between a foreground and a background pixel is
one directed unit step (foreground on its right, y down), and following the steps end to end
closes them into rings: outlines clockwise on screen (y down), holes the other way. The chaining is
done for all edges at once (pointer jumping over the successor permutation), so a map of
millions of boundary edges is traced without a Python loop per pixel, and the coordinates are
whole numbers: bands of one map traced apart meet exactly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import shapely


@dataclass(frozen=True)
class Rings:
    """Rings of vertices (x, y) on the pixel-corner grid, corners only (straight runs merged).

    Ring i is `xy[start[i]:start[i + 1]]`, not repeated at the end. `area` is signed: > 0 for
    an outline (foreground inside), < 0 for a hole. `inner` is a point inside the ring's
    background side next to its first edge (for a hole: inside the hole), for nesting."""

    xy: np.ndarray  # (N, 2) int64
    start: np.ndarray  # (R + 1,) int64
    area: np.ndarray  # (R,) float64, signed
    inner: np.ndarray  # (R, 2) float64
    row_min: np.ndarray  # (R,) int64
    row_max: np.ndarray  # (R,) int64
    pinched: bool = False  # pixels touching only at a corner were left (a ring touches itself)

    def __len__(self) -> int:
        return len(self.area)

    def linear_rings(
        self, which: np.ndarray, scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)
    ) -> np.ndarray:
        """Rings `which` as shapely LinearRings, at `xy * scale + offset` (one vectorized call)."""
        counts = np.diff(self.start)[which]
        first = np.cumsum(counts) - counts
        idx = np.arange(int(counts.sum())) + np.repeat(self.start[which] - first, counts)
        coords = self.xy[idx] * scale + np.asarray(offset, dtype=float)
        return shapely.linearrings(coords, indices=np.repeat(np.arange(len(which)), counts))


class _Edges:
    """A padded grid and its two transition maps: `across[y, x]`, the unit edge along vertex
    row y under pixel column x; `down[x, y]` (stored transposed, so a column reads as a row),
    the unit edge along vertex column x beside pixel row y."""

    def __init__(self, grid: np.ndarray, padded: bool = False):
        self.fg = grid if padded else np.pad(grid.astype(bool, copy=False), 1)
        self.across = self.fg[1:, 1:-1] != self.fg[:-1, 1:-1]  # (h + 1, w)
        self._columns: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """(fg transposed, `down`): made only where corners may start two runs (a pinch was
        left), since otherwise the vertical runs follow from the horizontal ones."""
        if self._columns is None:
            fg_t = np.ascontiguousarray(self.fg.T)
            self._columns = fg_t, fg_t[1:, 1:-1] != fg_t[:-1, 1:-1]  # (w + 1, h)
        return self._columns

    def saddles(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertices (x, y) where two pixels meet only at a corner: edges left and right of the
        vertex along its row, and its two upper pixels differ."""
        a, fg = self.across, self.fg
        s = a[:, :-1] & a[:, 1:]
        s &= fg[:-1, 1:-2] != fg[:-1, 2:-1]
        if not s.any():
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        y, x = np.divmod(np.flatnonzero(s), s.shape[1])
        return x + 1, y

    def saddles_at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Of vertices (x, y), the saddles (a check of those near a change only)."""
        w = self.across.shape[1]
        ok = (x >= 1) & (x <= w - 1)
        x, y = x[ok], y[ok]
        a, fg = self.across, self.fg
        s = a[y, x - 1] & a[y, x] & (fg[y, x] != fg[y, x + 1])
        return x[s], y[s]

    def fill(self, px: np.ndarray, py: np.ndarray) -> None:
        """Set background pixels and flip the edges around them."""
        self.fg[py + 1, px + 1] = True
        self.across[py, px] ^= True
        self.across[py + 1, px] ^= True
        if self._columns is not None:
            fg_t, down = self._columns
            fg_t[px + 1, py + 1] = True
            down[px, py] ^= True
            down[px + 1, py] ^= True


def _bridge(edges: _Edges, passes: int = 8) -> bool:
    """Join pixels that touch only at a corner (a 2x2 window of two diagonal pixels) by setting
    the window's upper background pixel: a ring through the shared corner would touch itself
    there, which no polygon format accepts. A bridge adds one pixel and can, rarely, make a
    new window (only at the corners of a bridge, so only those are checked again); True when
    none is left."""
    x, y = edges.saddles()
    for _ in range(passes):
        if not len(x):
            return True
        left_fg = edges.fg[y, x]  # pixel (x - 1, y - 1), padded
        px = np.where(left_fg, x, x - 1)
        key = np.unique((y - 1) * edges.fg.shape[1] + px)
        py, px = np.divmod(key, edges.fg.shape[1])
        bg = ~edges.fg[py + 1, px + 1]
        px, py = px[bg], py[bg]
        edges.fill(px, py)
        cx = np.concatenate([px, px + 1, px, px + 1])
        cy = np.concatenate([py, py, py + 1, py + 1])
        x, y = edges.saddles_at(cx, cy)
    return not len(x)


def _vertical_runs(h_line, h_start, h_end, fg: np.ndarray, h1: int) -> tuple[np.ndarray, ...]:
    """The vertical runs from the horizontal ones' corners, as `_runs` gives them, where no
    vertex starts two runs: every corner ends one horizontal and one vertical run, so a
    column's corners, sorted, pair up into its vertical runs."""
    key = np.concatenate([h_start * h1 + h_line, h_end * h1 + h_line])
    key.sort()
    x, a, b = key[0::2] // h1, key[0::2] % h1, key[1::2] % h1
    down = fg[a + 1, x]  # the pixel left of the run's top edge (padded): foreground heads down
    return x, np.where(down, a, b), np.where(down, b, a), down


def _runs(edges: _Edges, transposed: bool) -> tuple[np.ndarray, ...]:
    """Maximal straight runs of one orientation: (line, start, end, foreground side) where a
    horizontal run lies on vertex row `line` from x = start to x = end (a vertical one on
    vertex column `line`), sorted by line then start."""
    step, fg = edges.columns[::-1] if transposed else (edges.across, edges.fg)
    width = step.shape[1]
    flat = np.flatnonzero(step)
    if not len(flat):
        z = np.zeros(0, np.int64)
        return z, z, z, np.zeros(0, bool)
    line, col = np.divmod(flat, width)
    after = fg.reshape(-1)[flat + width + 2 + 1 + 2 * line]  # the pixel past the line, padded
    brk = np.ones(len(flat), bool)
    brk[1:] = (flat[1:] != flat[:-1] + 1) | (line[1:] != line[:-1]) | (after[1:] != after[:-1])
    first = np.flatnonzero(brk)
    last = np.r_[first[1:], len(flat)] - 1
    a, b, fwd = col[first], col[last] + 1, after[first]
    # Horizontal: foreground below heads right (a -> b), above heads left. Vertical (x = line):
    # foreground right of the line heads up (b -> a), left of it heads down.
    if transposed:
        fwd = ~fwd
    return line[first], np.where(fwd, a, b), np.where(fwd, b, a), fwd


_scratch = threading.local()


def _vertex_table(size: int) -> np.ndarray:
    """A scratch int32 table of at least `size` entries, kept per thread: a re-trace writes and
    reads a few entries per run, and fresh pages for every call (20 MB for a 2272² grid) cost
    more than the tracing itself."""
    table = getattr(_scratch, "table", None)
    if table is None or len(table) < size:
        table = _scratch.table = np.empty(size, np.int32)
    return table[:size]


def _ring_heads(nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per element of the successor permutation `nxt`: the smallest index in its cycle and the
    steps forward to it, by doubling (each round doubles the window every element has seen;
    int32 values updated in place: a third less time than int64 copies). Dropping rings that
    are already whole after a few rounds was measured slower: most runs are in long rings."""
    n = len(nxt)
    best, dist, jump = np.arange(n, dtype=np.int32), np.zeros(n, np.int32), nxt.copy()
    span = 1
    while True:
        b2 = best[jump]
        better = b2 < best
        np.copyto(best, b2, where=better)
        d2 = dist[jump]
        d2 += span
        np.copyto(dist, d2, where=better)
        if np.array_equal(best, best[nxt]):
            break
        jump, span = jump[jump], span * 2
    return best.astype(np.int64), dist.astype(np.int64)


def _successors_at_corners(h_runs: tuple, v_runs: tuple, h1: int, w1: int) -> tuple[np.ndarray, np.ndarray]:
    """(vertical run after each horizontal one, horizontal run after that) where vertices may
    start two runs: two pixels meeting at a corner, whose runs are chosen so both stay in one
    outline (right -> up, left -> down; down -> right, up -> left)."""
    (h_line, h_start, h_end, h_fwd), (v_line, v_start, v_end, v_fwd) = h_runs, v_runs
    v_keys = v_line * h1 + v_start  # sorted: runs of a column do not overlap
    h_keys = h_line * w1 + h_start
    want = h_end * h1 + h_line
    at = np.searchsorted(v_keys, want)
    two = (at + 1 < len(v_keys)) & (v_keys[np.minimum(at + 1, len(v_keys) - 1)] == want)
    v_next = np.where(two & (v_fwd[at] != ~h_fwd), at + 1, at)
    want = v_end * w1 + v_line
    at = np.searchsorted(h_keys, want)
    two = (at + 1 < len(h_keys)) & (h_keys[np.minimum(at + 1, len(h_keys) - 1)] == want)
    h_next = np.where(two & (h_fwd[at] != v_fwd), at + 1, at)
    return v_next, h_next[v_next]


def padded_at_or_above(values: np.ndarray, level) -> np.ndarray:
    """`values >= level` inside a border of one unset pixel: `trace_rings(..., padded=True)`
    takes it without copying the grid again."""
    out = np.zeros((values.shape[0] + 2, values.shape[1] + 2), bool)
    np.greater_equal(values, level, out=out[1:-1, 1:-1])
    return out


def trace_rings(grid: np.ndarray, bridge: bool = False, padded: bool = False) -> Rings:
    """All rings of the foreground of a bool (h, w) grid. Pixel (x, y) spans [x, x+1) x
    [y, y+1). Where two pixels touch only at a corner the outline passes the corner twice
    (8-connected) unless `bridge` joins them first (see `_bridge`). `padded`: `grid` already
    has a border of one unset pixel (and is changed in place by `bridge`)."""
    edges = _Edges(grid, padded)
    if padded:
        grid = grid[1:-1, 1:-1]
    pinched = not _bridge(edges) if bridge else bool(len(edges.saddles()[0]))
    h_line, h_start, h_end, h_fwd = _runs(edges, False)
    h1, w1 = grid.shape[0] + 1, grid.shape[1] + 1
    if pinched:
        v_line, v_start, v_end, v_fwd = _runs(edges, True)
    else:
        v_line, v_start, v_end, v_fwd = _vertical_runs(h_line, h_start, h_end, edges.fg, h1)
    n = len(h_line)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return Rings(
            np.zeros((0, 2), np.int64), np.zeros(1, np.int64), np.zeros(0), np.zeros((0, 2)), empty, empty
        )
    # Runs alternate horizontal, vertical: after horizontal run i comes the vertical run that
    # starts at its end vertex, then the horizontal run starting at that one's end. Where two
    # vertical runs start at a vertex (two pixels meeting at a corner) the one keeping both
    # pixels in one outline is taken.
    if pinched:
        v_next, nxt = _successors_at_corners(
            (h_line, h_start, h_end, h_fwd), (v_line, v_start, v_end, v_fwd), h1, w1
        )
    else:  # each vertex starts one run at most: a table from vertex to run
        table = _vertex_table(h1 * w1)  # only entries written here are read
        table[v_start * w1 + v_line] = np.arange(len(v_line), dtype=np.int32)
        v_next = table[h_line * w1 + h_end].astype(np.int64)
        table[h_line * w1 + h_start] = np.arange(n, dtype=np.int32)
        nxt = table[v_end * w1 + v_line][v_next].astype(np.int64)  # horizontal run two steps on

    # Per horizontal run: the smallest index in its ring and the steps forward to it, by
    # doubling (window of 2^k runs per round).
    best, dist = _ring_heads(nxt)
    head = best == np.arange(n)
    ring_id = (np.cumsum(head) - 1)[best]
    size = np.bincount(ring_id)  # horizontal runs per ring
    rank = (size[ring_id] - dist) % size[ring_id]
    start = np.r_[0, np.cumsum(2 * size)].astype(np.int64)
    pos = start[:-1][ring_id] + 2 * rank
    xy = np.empty((2 * n, 2), np.int64)
    xy[pos, 0], xy[pos, 1] = h_start, h_line
    xy[pos + 1, 0], xy[pos + 1, 1] = v_line[v_next], v_start[v_next]
    # Shoelace on a rectilinear ring: the horizontal runs' (start - end) * y.
    area = np.bincount(ring_id, weights=((h_start - h_end) * h_line).astype(np.float64))
    first = np.flatnonzero(head)
    # The pixel on the background side of a ring's first run: above a run heading right (the
    # foreground is below it), below one heading left, next to the run's start.
    side = np.where(h_fwd[first], 0.5, -0.5)
    inner = np.stack([h_start[first] + side, h_line[first] - side], axis=1)
    y = xy[:, 1]
    return Rings(
        xy,
        start,
        area,
        inner,
        np.minimum.reduceat(y, start[:-1]),
        np.maximum.reduceat(y, start[:-1]),
        pinched,
    )
