"""The open slide and what is kept with it: opening off the GUI thread, the annotation store,
autosave, restoring, import and export.

Everything here touches the disk, so every read and write runs on a worker thread (superqt)
and comes back as a signal; a result that arrives after the slide changed is dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtGui import QImage
from shapely.geometry import box
from superqt.utils import create_worker

from app.core import export
from app.core.annotation_store import AnnotationStore, SavedState
from app.core.annotations import Annotation, read_geojson
from app.core.likelihood_map import is_likelihood_map, not_a_slide_message
from app.core.slide import Slide, SlideError
from app.logs import data_dir
from app.ui.autosave import Autosaver
from app.ui.image_convert import array_to_qimage

log = logging.getLogger(__name__)
BASE_IMAGE_SIDE = 2048
EXPORT_SUFFIX = {
    "geojson": ".geojson",
    "asap-xml": ".xml",
    "png": ".png",
    "tiff-mask": "_mask.tif",
    "csv": ".csv",
}


@dataclass
class OpenedSlide:
    slide: Slide
    thumbnail: np.ndarray  # shown under the tiles, and the tissue mask is made from it
    base: QImage
    associated: dict[str, QImage]


def open_slide_job(path: str) -> OpenedSlide:
    """Everything opening a slide reads from disk, done off the GUI thread."""
    if is_likelihood_map(path):
        raise SlideError(not_a_slide_message(path))
    slide = Slide.open(path)
    try:
        thumbnail = slide.thumbnail(BASE_IMAGE_SIDE)
        base = array_to_qimage(thumbnail)
        associated = {}
        for name in slide.associated_image_names:
            try:
                associated[name] = array_to_qimage(slide.associated_image(name))
            except Exception:
                log.warning("associated image %s of %s unreadable", name, path, exc_info=True)
    except BaseException:
        slide.close()
        raise
    return OpenedSlide(slide, thumbnail, base, associated)


class SlideSession(QObject):
    opened = Signal(str, object)  # the path asked for, OpenedSlide
    openFailed = Signal(str, str)  # path, message
    restored = Signal(object)  # SavedState (annotations outside the slide already clipped)
    restoreFailed = Signal(str)
    saved = Signal(str)  # path
    saveFailed = Signal(str)
    imported = Signal(list, list, str)  # annotations, notes, path
    importFailed = Signal(str)
    exported = Signal(str, str)  # format, path
    exportFailed = Signal(str)

    def __init__(self, settings: QSettings, parent: QObject | None = None):
        super().__init__(parent)
        self.settings = settings
        self.slide: Slide | None = None
        self.store: AnnotationStore | None = None
        self.user_mpp: float | None = None  # a pixel size the user set for a slide without one
        self._opening: str | None = None
        self.autosaver = Autosaver(self)
        self.autosaver.saved.connect(self.saved)
        self.autosaver.failed.connect(self.saveFailed)

    # ------------------------------------------------------------------ opening

    def open(self, path: str) -> None:
        self._opening = path
        create_worker(
            open_slide_job,
            path,
            _start_thread=True,
            _connect={
                "returned": lambda opened: self._on_opened(path, opened),
                "errored": lambda exc: self._on_open_failed(path, exc),
            },
        )

    def _on_opened(self, path: str, opened: OpenedSlide) -> None:
        if self._opening != path:  # a newer open superseded this one
            opened.slide.close()
            return
        self.close()
        self.slide = opened.slide
        self.user_mpp = None
        self.store = AnnotationStore(opened.slide.path, data_dir(), self.mpp(), self.offset())
        self.opened.emit(path, opened)

    def _on_open_failed(self, path: str, exc: BaseException) -> None:
        msg = str(exc) if str(exc) else type(exc).__name__
        log.warning("cannot open %s: %s", path, msg)
        self.openFailed.emit(path, msg)

    def close(self) -> None:
        self.autosaver.attach(None, None)  # writes what is pending for this slide first
        self.store = None
        if self.slide is not None:
            self.slide.close()  # deferred by Slide itself until reads in flight finish
        self.slide = None

    # ------------------------------------------------------------------ measurements

    def mpp(self) -> float | None:
        if self.slide is None or not self.slide.mpp:
            return None
        return float(sum(self.slide.mpp) / 2)

    def offset(self) -> tuple[float, float]:
        s = self.slide
        return tuple(s.bounds[:2]) if s is not None and s.bounds else (0, 0)

    def set_pixel_size(self, mpp: float) -> None:
        """A pixel size for a slide that records none: every measurement and run uses it, and
        it is saved with the slide's annotations."""
        if self.slide is None:
            return
        self.user_mpp = float(mpp)
        self.slide.mpp = (self.user_mpp, self.user_mpp)
        if self.store is not None:
            self.store.mpp = self.user_mpp
        self.autosaver.changed()

    # ------------------------------------------------------------------ saving and restoring

    def restore(self, document) -> None:
        """Read what was saved for the open slide, then keep saving `document()` after every
        change. A file that cannot be read is left as it is; new work goes to a new name."""
        slide, store = self.slide, self.store
        create_worker(
            store.load,
            _start_thread=True,
            _connect={
                "returned": lambda state: self._restored(slide, store, state, document),
                "errored": lambda e: self._restore_failed(slide, store, e, document),
            },
        )

    def _restored(self, slide, store: AnnotationStore, state: SavedState, document) -> None:
        if self.slide is not slide:
            return
        if state.mpp and not slide.mpp:
            self.user_mpp = state.mpp
            slide.mpp = (state.mpp, state.mpp)
            store.mpp = state.mpp
        self.autosaver.attach(store, document)
        self.restored.emit(state)
        for note in state.notes:
            log.info("restore %s: %s", store.existing(), note)

    def _restore_failed(self, slide, store: AnnotationStore, exc: BaseException, document) -> None:
        if self.slide is not slide:
            return
        broken = store.existing()
        if broken is not None:
            store.path = broken.with_name(
                broken.name.replace(".annotations.geojson", ".recovered.annotations.geojson")
            )
        self.autosaver.attach(store, document)
        self.restoreFailed.emit(f"{exc}\n\nThe file was left as it is; new work is saved to {store.path}.")

    def where_saved(self) -> str:
        store = self.store
        if store is None:
            return ""
        where = (
            "beside the slide"
            if store.beside_slide
            else "in your data folder (the slide's folder is read-only)"
        )
        return f"Saved automatically {where}"

    def saved_text(self, path: str) -> str:
        """One line (the panel is short on a laptop); the path is the label's tooltip."""
        store = self.store
        where = (
            "beside the slide"
            if store is None or store.beside_slide
            else "in your data folder (the slide's folder is read-only)"
        )
        return f"Saved {time.strftime('%H:%M:%S')} {where}"

    # ------------------------------------------------------------------ import / export

    def import_file(self, path: str) -> None:
        """Read in the background; on any error the open annotations stay as they are."""
        slide, offset = self.slide, self.offset()

        def job():
            annotations, notes = read_geojson(path, offset)
            w, h = slide.dimensions
            outside = export.outside_slide(annotations, slide)
            if outside:
                notes.append(f"{len(outside)} annotation(s) reach outside the slide ({w} x {h} px); clipped")
                annotations = export.clip(annotations, box(0, 0, w, h))
            return annotations, notes

        def done(result):
            if self.slide is slide:
                self.imported.emit(result[0], result[1], path)

        create_worker(
            job,
            _start_thread=True,
            _connect={"returned": done, "errored": lambda e: self.importFailed.emit(str(e))},
        )

    def default_export_path(self, fmt: str) -> str:
        """In the folder last exported to (else the slide's), named after the slide."""
        folder = self.settings.value("export_dir", "") or str(self.slide.path.parent)
        return str(Path(folder) / (self.slide.path.stem + EXPORT_SUFFIX[fmt]))

    def export(self, fmt: str, path: str, annotations: list[Annotation], view_rect, view_mpp) -> None:
        """Export on a background thread; a failure says so and leaves no partial file."""
        slide, mpp, offset = self.slide, self.mpp(), self.offset()
        anns = list(annotations)
        self.settings.setValue("export_dir", str(Path(path).parent))

        def job():
            if fmt == "geojson":
                return export.export_geojson(path, anns, mpp, offset)
            if fmt == "asap-xml":
                return export.export_asap_xml(path, anns, offset)
            if fmt == "csv":
                return export.export_csv(path, anns, mpp)
            if fmt == "png":  # the current view, at the resolution it is shown
                return export.export_png(path, slide, anns, view_rect, view_mpp)
            return export.export_tiff_mask(path, slide, anns)

        create_worker(
            job,
            _start_thread=True,
            _connect={
                "returned": lambda p: self.exported.emit(fmt, str(p)),
                "errored": lambda e: self.exportFailed.emit(str(e)),
            },
        )
