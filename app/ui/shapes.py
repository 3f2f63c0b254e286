"""shapely geometry -> QPainterPath, for drawing regions and annotations in the scene."""

from __future__ import annotations

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QPainterPath, QPolygonF
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry


def _ring(coords) -> QPolygonF:
    return QPolygonF([QPointF(x, y) for x, y, *_ in coords])


def geometry_path(geom: BaseGeometry) -> QPainterPath:
    """Polygons with holes as one odd-even path (holes stay empty when filled)."""
    path = QPainterPath()
    path.setFillRule(Qt.FillRule.OddEvenFill)
    if geom is None or geom.is_empty:
        return path
    for poly in getattr(geom, "geoms", [geom]):
        if not isinstance(poly, Polygon) or poly.is_empty:
            continue
        path.addPolygon(_ring(poly.exterior.coords))
        path.closeSubpath()
        for hole in poly.interiors:
            path.addPolygon(_ring(hole.coords))
            path.closeSubpath()
    return path
