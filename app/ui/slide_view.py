"""The slide canvas: a QGraphicsView whose scene is the slide in level-0 pixels.

Slide pixels are painted in `drawBackground` straight from the tile cache, coarse to fine: the
whole-slide thumbnail first (so there are never holes), then cached tiles of coarser levels,
then the level chosen for the zoom. Each tile's edges are rounded to device pixels, the same
rounding for neighbours, so adjacent tiles meet exactly at any fractional zoom (no seams).
Annotations and overlays are ordinary QGraphicsItems above that background.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QEvent, QPointF, QRect, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QTransform
from PySide6.QtWidgets import QFrame, QGraphicsScene, QGraphicsView, QWidget

from app.core import scale as scale_math
from app.core.slide import Slide
from app.core.tile_grid import TileGrid, TileKey
from app.ui.overview import Overview
from app.ui.region_editor import RegionEditor
from app.ui.tile_loader import TileLoader

GLASS = QColor(244, 244, 242)
ZOOM_STEP = 1.25
MAX_ZOOM = 8.0  # device px per level-0 px


class ScaleBar(QWidget):
    """Scale bar and on-screen magnification, pinned to the bottom-left of the view."""

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.bar_px = 0.0
        self.label = ""
        self.mag_text = ""
        self.resize(220, 46)

    def set_scale(self, bar_px: float, label: str, mag_text: str) -> None:
        if (bar_px, label, mag_text) != (self.bar_px, self.label, self.mag_text):
            self.bar_px, self.label, self.mag_text = bar_px, label, mag_text
            self.update()

    def paintEvent(self, _event) -> None:
        if not self.label:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(255, 255, 255, 210))
        p.drawRoundedRect(QRectF(0, 0, self.width(), self.height()), 4, 4)
        x0, y = 10, 30
        bar = round(self.bar_px)
        p.setPen(QPen(QColor(20, 20, 20), 3))
        p.drawLine(x0, y, x0 + bar, y)
        p.setPen(QPen(QColor(20, 20, 20), 2))
        p.drawLine(x0, y - 6, x0, y + 4)
        p.drawLine(x0 + bar, y - 6, x0 + bar, y + 4)
        p.setPen(QColor(20, 20, 20))
        p.drawText(QRect(x0, 2, 200, 20), Qt.AlignmentFlag.AlignLeft, self.label)
        if self.mag_text:
            p.drawText(QRect(0, 2, self.width() - 8, 20), Qt.AlignmentFlag.AlignRight, self.mag_text)
        p.end()


class SlideView(QGraphicsView):
    viewChanged = Signal()
    cursorMoved = Signal(float, float)  # level-0 pixels
    tileFailed = Signal(str)

    def __init__(self, parent: QWidget | None = None, cache_bytes: int = 256 << 20):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setBackgroundBrush(GLASS)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.SmartViewportUpdate)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAcceptDrops(False)  # the main window takes dropped files
        self.cache_bytes = cache_bytes
        self.slide: Slide | None = None
        self.grid: TileGrid | None = None
        self.loader: TileLoader | None = None
        self.base_image: QImage | None = None
        self.scale_bar = ScaleBar(self)
        self.overview = Overview(self)
        self.overview.centreRequested.connect(self.centre_on)
        self._request_timer = QTimer(self)
        self._request_timer.setSingleShot(True)
        self._request_timer.setInterval(0)
        self._request_timer.timeout.connect(self._request_tiles)
        self.editor = RegionEditor(self)
        self.contextMenuAt = None  # (x, y, global pos) -> bool: the window's menu for an outline

    # ------------------------------------------------------------------ slide

    def set_slide(self, slide: Slide, base_image: QImage) -> None:
        self.close_slide()
        self.slide = slide
        self.grid = TileGrid.for_slide(slide)
        self.base_image = base_image
        self.loader = TileLoader(slide, self.grid, self.cache_bytes)
        self.loader.tileReady.connect(self._on_tile_ready)
        self.loader.tileFailed.connect(self._on_tile_failed)
        w, h = slide.dimensions
        # Room to pan any point of the slide to the centre of the view, at any zoom we allow.
        margin = max(w, h) * 2
        self.setSceneRect(QRectF(-margin, -margin, w + 2 * margin, h + 2 * margin))
        self.overview.set_image(base_image, w, h)
        self._place_overlays()
        self.fit()

    def close_slide(self) -> None:
        self.editor.active.deactivate()  # its brush circle or half-drawn polygon goes too
        if self.loader is not None:
            self.loader.close()
            self.loader.deleteLater()
        self.loader = None
        self.slide = None
        self.grid = None
        self.base_image = None
        self.overview.set_image(None, 1, 1)
        self.scale_bar.set_scale(0, "", "")
        self.viewport().update()

    # ------------------------------------------------------------------ zoom & navigation

    @property
    def zoom(self) -> float:
        """Device pixels per level-0 pixel."""
        return self.transform().m11()

    def fit_zoom(self) -> float:
        if self.slide is None:
            return 1.0
        w, h = self.slide.dimensions
        vp = self.viewport().rect()
        return 0.95 * min(vp.width() / w, vp.height() / h)

    def set_zoom(self, zoom: float, anchor: QPointF | None = None) -> None:
        """Zoom, keeping the scene point under `anchor` (viewport px) fixed, else the centre."""
        if self.slide is None:
            return
        zoom = min(MAX_ZOOM, max(self.fit_zoom() / 4, zoom))
        anchor = anchor if anchor is not None else QPointF(self.viewport().rect().center())
        scene_pt = self.mapToScene(anchor.toPoint())
        self.setTransform(QTransform.fromScale(zoom, zoom))
        # Put scene_pt back under the anchor.
        delta = self.mapToScene(anchor.toPoint()) - scene_pt
        centre = self.mapToScene(self.viewport().rect().center()) - delta
        self.centerOn(centre)
        self._view_changed()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        self.set_zoom(self.zoom * factor, anchor)

    def fit(self) -> None:
        if self.slide is None:
            return
        self.setTransform(QTransform.fromScale(self.fit_zoom(), self.fit_zoom()))
        w, h = self.slide.dimensions
        self.centerOn(w / 2, h / 2)
        self._view_changed()

    def native(self) -> None:
        """One screen pixel per level-0 pixel ("1:1")."""
        self.set_zoom(1.0)

    def centre_on(self, x: float, y: float) -> None:
        self.centerOn(x, y)
        self._view_changed()

    def visible_rect(self) -> QRectF:
        return self.mapToScene(self.viewport().rect()).boundingRect()

    def level_for_zoom(self) -> int:
        if self.slide is None or self.grid is None:
            return 0
        ratio = self.devicePixelRatioF() if self.devicePixelRatioF() > 0 else 1.0
        return self.grid.level_for_downsample(1.0 / (self.zoom * ratio))

    def wheelEvent(self, event) -> None:
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(ZOOM_STEP**steps, event.position())
        event.accept()

    def keyPressEvent(self, event) -> None:
        if self.slide is not None and self.editor.active.key(event):
            event.accept()
            return
        key = event.key()
        vp = self.viewport().rect()
        pan = {
            Qt.Key.Key_Left: (-0.2 * vp.width(), 0),
            Qt.Key.Key_Right: (0.2 * vp.width(), 0),
            Qt.Key.Key_Up: (0, -0.2 * vp.height()),
            Qt.Key.Key_Down: (0, 0.2 * vp.height()),
        }
        if key in pan:
            dx, dy = pan[key]
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() + int(dx))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() + int(dy))
        elif key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(ZOOM_STEP)
        elif key in (Qt.Key.Key_Minus, Qt.Key.Key_Underscore):
            self.zoom_by(1 / ZOOM_STEP)
        elif key == Qt.Key.Key_0:
            self.fit()
        elif key == Qt.Key.Key_1:
            self.native()
        else:
            super().keyPressEvent(event)

    def _scene_pos(self, event) -> QPointF:
        return self.mapToScene(event.position().toPoint())

    def event(self, event) -> bool:
        """A tool in the middle of a shape keeps its keys (Backspace, Esc, Enter) from the
        window's shortcuts (Delete selected, Cancel delineation)."""
        if (
            event.type() == QEvent.Type.ShortcutOverride
            and self.slide is not None
            and self.editor.active.wants_key(event)
        ):
            event.accept()
            return True
        return super().event(event)

    def contextMenuEvent(self, event) -> None:
        p = self.mapToScene(event.pos())
        if (
            self.slide is not None
            and self.contextMenuAt is not None
            and self.contextMenuAt(p.x(), p.y(), event.globalPos())
        ):
            event.accept()
            return
        super().contextMenuEvent(event)

    def mousePressEvent(self, event) -> None:
        if self.slide is not None and self.editor.active.press(self._scene_pos(event), event):
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:
        p = self._scene_pos(event)
        if self.slide is not None:
            self.editor.active.hover(p)
            if self.editor.active.move(p, event):
                event.accept()
                self.cursorMoved.emit(p.x(), p.y())
                return
        super().mouseMoveEvent(event)
        self.cursorMoved.emit(p.x(), p.y())

    def mouseReleaseEvent(self, event) -> None:
        if self.slide is not None and self.editor.active.release(self._scene_pos(event), event):
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event) -> None:
        if self.slide is not None and self.editor.active.double_click(self._scene_pos(event)):
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        super().scrollContentsBy(dx, dy)
        self._view_changed()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._place_overlays()
        self._view_changed()

    def _place_overlays(self) -> None:
        vp = self.viewport().geometry()
        self.scale_bar.move(vp.left() + 12, vp.bottom() - self.scale_bar.height() - 12)
        self.overview.move(vp.right() - self.overview.width() - 12, vp.top() + 12)

    def _view_changed(self) -> None:
        if self.slide is None:
            return
        mpp = float(sum(self.slide.mpp) / 2) if self.slide.mpp else None
        bar_px, label = scale_math.scale_bar(mpp, self.zoom)
        mag = scale_math.magnification(self.slide.objective_power, mpp, self.zoom)
        self.scale_bar.set_scale(bar_px, label, f"{mag:.1f}x" if mag else f"{self.zoom:.0%}")
        self.overview.set_viewport(self.visible_rect())
        self._request_timer.start()
        self.viewChanged.emit()

    # ------------------------------------------------------------------ tiles

    def _request_tiles(self) -> None:
        if self.loader is None or self.grid is None:
            return
        r = self.visible_rect()
        level = self.level_for_zoom()
        # One ring of tiles beyond the edge, so a short pan finds them ready.
        sx, _ = self.grid.scale(level)
        m = self.grid.tile * sx
        keys = self.grid.tiles_in(level, r.x() - m, r.y() - m, r.width() + 2 * m, r.height() + 2 * m)
        self.loader.request(keys)

    def _on_tile_ready(self, key: TileKey) -> None:
        if self.grid is None:
            return
        x, y, w, h = self.grid.tile_rect(key)
        self.viewport().update(self.mapFromScene(QRectF(x, y, w, h)).boundingRect().adjusted(-2, -2, 2, 2))

    def _on_tile_failed(self, key: TileKey, message: str) -> None:
        self._on_tile_ready(key)
        where = self.grid.describe(key[0]) if self.grid is not None else f"level {key[0]}"
        self.tileFailed.emit(f"Tile at {where} ({key[1]}, {key[2]}) could not be read: {message}")

    def visible_tiles_loaded(self) -> bool:
        """True when every tile of the current level in view is cached (or has failed)."""
        if self.loader is None or self.grid is None:
            return False
        r = self.visible_rect()
        keys = self.grid.tiles_in(self.level_for_zoom(), r.x(), r.y(), r.width(), r.height())
        return all(k in self.loader.cache or k in self.loader.failed for k in keys)

    def drawBackground(self, painter: QPainter, rect: QRectF) -> None:
        painter.fillRect(rect, GLASS)
        if self.slide is None or self.grid is None or self.loader is None:
            return
        t = painter.worldTransform()
        w0, h0 = self.slide.dimensions
        painter.save()
        painter.resetTransform()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        if self.base_image is not None:
            painter.drawImage(_device_rect(t, 0, 0, w0, h0), self.base_image)
        level = self.level_for_zoom()
        cache = self.loader.cache
        # Coarser cached tiles first (at most two levels up), so zooming in never shows only the blur.
        for lvl in range(min(len(self.grid.level_dimensions) - 1, level + 2), level - 1, -1):
            for key in self.grid.tiles_in(lvl, rect.x(), rect.y(), rect.width(), rect.height()):
                img = cache.peek(key)
                if img is not None:
                    painter.drawImage(_device_rect(t, *self.grid.tile_rect(key)), img)
                elif lvl == level and key in self.loader.failed:
                    _draw_placeholder(painter, _device_rect(t, *self.grid.tile_rect(key)))
        painter.restore()


def _device_rect(t: QTransform, x: float, y: float, w: float, h: float) -> QRect:
    """Scene rect -> device rect with each edge rounded on its own, so neighbours share edges."""
    p0 = t.map(QPointF(x, y))
    p1 = t.map(QPointF(x + w, y + h))
    x0, y0, x1, y1 = (math.floor(v + 0.5) for v in (p0.x(), p0.y(), p1.x(), p1.y()))
    return QRect(x0, y0, x1 - x0, y1 - y0)


def _draw_placeholder(painter: QPainter, r: QRect) -> None:
    painter.fillRect(r, QColor(225, 225, 225))
    painter.setPen(QPen(QColor(170, 60, 60), 2))
    painter.drawRect(r.adjusted(1, 1, -1, -1))
    painter.drawLine(r.topLeft(), r.bottomRight())
    painter.drawLine(r.topRight(), r.bottomLeft())
