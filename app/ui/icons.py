"""Tool-bar icons drawn with QPainter: crisp at any DPI and no image files to ship or license."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap, QPolygonF

INK = QColor(40, 44, 52)
BLUE = QColor(0, 120, 255)
RED = QColor(200, 0, 0)


def _icon(draw) -> QIcon:
    pm = QPixmap(64, 64)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    draw(p)
    p.end()
    return QIcon(pm)


def _pen(p: QPainter, colour=INK, width=4.0) -> None:
    pen = QPen(colour, width)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    p.setPen(pen)


def select_icon() -> QIcon:
    def d(p):
        _pen(p, INK, 3)
        p.setBrush(QColor(255, 255, 255))
        p.drawPolygon(
            QPolygonF(
                [
                    QPointF(16, 8),
                    QPointF(16, 52),
                    QPointF(28, 40),
                    QPointF(36, 58),
                    QPointF(44, 54),
                    QPointF(36, 37),
                    QPointF(52, 36),
                ]
            )
        )

    return _icon(d)


def brush_icon() -> QIcon:
    def d(p):
        p.setPen(Qt.PenStyle.NoPen)
        c = QColor(BLUE)
        c.setAlpha(140)
        path = QPainterPath(QPointF(10, 46))
        path.cubicTo(QPointF(20, 20), QPointF(40, 60), QPointF(54, 16))
        pen = QPen(c, 14)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        p.strokePath(path, pen)
        _pen(p, INK, 2.5)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawEllipse(QPointF(54, 16), 8, 8)

    return _icon(d)


def eraser_icon() -> QIcon:
    def d(p):
        _pen(p, INK, 3)
        p.setBrush(QColor(250, 200, 210))
        p.drawPolygon(
            QPolygonF([QPointF(24, 52), QPointF(8, 36), QPointF(34, 10), QPointF(56, 32), QPointF(36, 52)])
        )
        p.drawLine(QPointF(18, 26), QPointF(40, 48))
        p.drawLine(QPointF(24, 56), QPointF(58, 56))

    return _icon(d)


def polygon_icon() -> QIcon:
    def d(p):
        _pen(p, BLUE, 4)
        c = QColor(BLUE)
        c.setAlpha(50)
        p.setBrush(c)
        pts = [QPointF(10, 40), QPointF(24, 10), QPointF(54, 18), QPointF(48, 52), QPointF(22, 56)]
        p.drawPolygon(QPolygonF(pts))
        p.setBrush(INK)
        p.setPen(Qt.PenStyle.NoPen)
        for pt in pts:
            p.drawEllipse(pt, 4.5, 4.5)

    return _icon(d)


def rectangle_icon() -> QIcon:
    def d(p):
        _pen(p, BLUE, 4)
        c = QColor(BLUE)
        c.setAlpha(50)
        p.setBrush(c)
        p.drawRect(QRectF(10, 16, 44, 34))

    return _icon(d)


def delineate_icon() -> QIcon:
    def d(p):
        c = QColor(RED)
        c.setAlpha(70)
        p.setBrush(c)
        _pen(p, RED, 4)
        path = QPainterPath(QPointF(14, 30))
        path.cubicTo(QPointF(10, 6), QPointF(44, 4), QPointF(50, 22))
        path.cubicTo(QPointF(60, 42), QPointF(40, 60), QPointF(26, 52))
        path.cubicTo(QPointF(16, 48), QPointF(18, 40), QPointF(14, 30))
        p.drawPath(path)

    return _icon(d)


def cancel_icon() -> QIcon:
    def d(p):
        _pen(p, RED, 6)
        p.drawLine(QPointF(16, 16), QPointF(48, 48))
        p.drawLine(QPointF(48, 16), QPointF(16, 48))

    return _icon(d)


def _arrow(p: QPainter, mirrored: bool) -> None:
    _pen(p, INK, 5)
    path = QPainterPath(QPointF(18, 28))
    path.cubicTo(QPointF(30, 14), QPointF(52, 18), QPointF(50, 44))
    tip = [QPointF(8, 26), QPointF(22, 14), QPointF(24, 34)]
    if mirrored:
        p.translate(64, 0)
        p.scale(-1, 1)
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.drawPath(path)
    p.setBrush(INK)
    p.drawPolygon(QPolygonF(tip))


def undo_icon() -> QIcon:
    return _icon(lambda p: _arrow(p, False))


def redo_icon() -> QIcon:
    return _icon(lambda p: _arrow(p, True))
