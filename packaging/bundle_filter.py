"""What the frozen app leaves out: imported by packaging/delineo.spec and by the size table."""

from __future__ import annotations

# Modules PyInstaller would otherwise follow from optional imports.
EXCLUDED_MODULES = [
    "torch",
    "torchvision",
    "nncf",
    "onnx",
    "onnxscript",
    "onnxconverter_common",
    "onnxruntime.quantization",
    "onnxruntime.tools",
    "onnxruntime.transformers",
    "kserve",
    "fastapi",
    "uvicorn",
    "tritonclient",
    "pytest",
    "tkinter",
    "matplotlib",
    "IPython",
    "app.model",
    "app.serve",
    "openvino.tools",
    "openvino.frontend.pytorch",
    "openvino.frontend.tensorflow",
    "openvino.frontend.jax",
    "PySide6.QtNetwork",
    "PySide6.QtQml",
    "PySide6.QtQuick",
    "PySide6.QtOpenGL",
    "PySide6.QtOpenGLWidgets",
    "PySide6.QtSql",
    "PySide6.QtTest",
    "PySide6.QtXml",
    "PySide6.QtDBus",
    "PySide6.QtPdf",
    "PySide6.QtMultimedia",
]

# Parts of files' destination paths that mark what no laptop user needs.
_DROPPED = (
    # OpenVINO: the NPU plugin (no laptop here has one) and the frontends for formats the app
    # never reads (it reads IR and ONNX only).
    "openvino_intel_npu_plugin",
    "openvino_tensorflow_frontend",
    "openvino_tensorflow_lite_frontend",
    "openvino_paddle_frontend",
    "openvino_pytorch_frontend",
    "openvino_jax_frontend",
    "openvino_gguf_frontend",
    "libopenvino_c.",  # OpenVINO's C API; the Python bindings use the C++ one
    "libtbbmalloc_proxy",  # replaces malloc process-wide when preloaded; never wanted here
    # A model's PyTorch weights: for `delineo train --init` only, never loaded by the app.
    "model-fp32.pt",
    # Pillow's AVIF and WebP plugins and their codec libraries, its colour-management (LittleCMS)
    # and Tk bindings: the app reads no AVIF or WebP, converts no ICC profiles, has no Tk.
    "PIL/_avif",
    "pillow.libs/libavif",
    "PIL/_webp",
    "pillow.libs/libwebp",
    "pillow.libs/libsharpyuv",
    "PIL/_imagingcms",
    "pillow.libs/liblcms2",
    "PIL/_imagingtk",
    # Qt: translations of Qt's own dialogs, and plugins for features the app does not use.
    "PySide6/Qt/translations",
    "PySide6/Qt/plugins/generic",
    "PySide6/Qt/plugins/networkinformation",
    "PySide6/Qt/plugins/tls",
    "PySide6/Qt/plugins/egldeviceintegrations",
    "PySide6/Qt/plugins/platforminputcontexts",
    "PySide6/Qt/plugins/platforms/libqvnc",
    "PySide6/Qt/plugins/platforms/libqlinuxfb",
    "PySide6/Qt/plugins/platforms/libqeglfs",
    "PySide6/Qt/plugins/platforms/libqminimalegl",
    "PySide6/Qt/plugins/platforms/libqvkkhrdisplay",
    # Image formats Qt would read that no slide, icon or export uses (JPEG, TIFF and SVG stay;
    # PNG is built into QtGui).
    "PySide6/Qt/plugins/imageformats/libqicns",
    "PySide6/Qt/plugins/imageformats/libqtga",
    "PySide6/Qt/plugins/imageformats/libqwbmp",
    "PySide6/Qt/plugins/imageformats/libqwebp",
    "PySide6/Qt/plugins/imageformats/libqgif",
    "PySide6/Qt/plugins/imageformats/libqico",
    # The GTK theme plugin pulls GTK, cairo and pango from the build machine (~12 MB, and
    # libraries that should come from the user's desktop); Qt's own style is used instead.
    "PySide6/Qt/plugins/platformthemes/libqgtk3",
)


def keep(dest: str) -> bool:
    """False for a bundled file that is in a dropped group."""
    d = dest.replace("\\", "/")
    return not any(part in d for part in _DROPPED)


def unneeded_top_level(binaries: list[tuple[str, str]], needs) -> set[str]:
    """Top-level libraries (the system ones PyInstaller pulled in as dependencies) that nothing
    kept needs any more, e.g. GTK, cairo and pango once the GTK theme plugin is dropped.

    `binaries` are (destination, source) pairs; `needs(source)` gives the library names a file
    links against. Everything in a package folder, Python's own library and extension modules
    are roots; a top-level library stays when a root needs it, directly or through another."""
    top = {dest: src for dest, src in binaries if "/" not in dest.replace("\\", "/")}
    roots = [src for dest, src in binaries if dest not in top or _is_root(dest)]
    kept: set[str] = set()
    todo = list(roots)
    seen: set[str] = set()
    while todo:
        src = todo.pop()
        if src in seen:
            continue
        seen.add(src)
        for name in needs(src):
            if name in top and name not in kept:
                kept.add(name)
                todo.append(top[name])
    return {dest for dest in top if dest not in kept and not _is_root(dest)}


def _is_root(dest: str) -> bool:
    return dest.startswith("libpython") or ".cpython-" in dest or dest.endswith(".abi3.so")
