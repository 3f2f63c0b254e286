"""Copy the licence files of every bundled distribution into the app's licenses/ folder.

Run by packaging/build-app with the build venv's Python, after PyInstaller: the venv holds
exactly what was frozen (the project's runtime dependencies), less the build tools below.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

BUILD_TOOLS = {
    "pip",
    "setuptools",
    "wheel",
    "pyinstaller",
    "pyinstaller-hooks-contrib",
    "altgraph",
    "packaging",
}
LICENCE_FILE = re.compile(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", re.IGNORECASE)
ROOT = Path(__file__).resolve().parents[1]


def main(app_dir: str) -> int:
    out = Path(app_dir) / "licenses"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
        name = dist.metadata["Name"]
        if name.lower() in BUILD_TOOLS:
            continue
        licence = dist.metadata.get("License-Expression") or dist.metadata.get("License") or ""
        licence = licence.splitlines()[0][:80] if licence else ""
        copied = 0
        for f in dist.files or []:
            if LICENCE_FILE.search(f.name) and not f.name.endswith((".py", ".pyc")):
                src = Path(f.locate())
                if src.is_file():
                    dest = out / name / f.name
                    dest.parent.mkdir(exist_ok=True)
                    shutil.copyfile(src, dest)
                    copied += 1
        rows.append({"name": name, "version": dist.version, "licence": licence, "files": copied})
    card = json.loads((ROOT / "resources/models/ebhi-tumour-resunet/card.json").read_text("utf-8"))
    shutil.copyfile(ROOT / "resources/fonts/LICENSE-DejaVu.txt", out / "DejaVu-fonts.txt")
    lines = [
        "Delineo is licensed under the Apache License 2.0.",
        "",
        f"Model ebhi-tumour-resunet: {card.get('licence', '')}.",
        f"  {card.get('data_attribution', '')}",
        "Sample slide CMU-1-Small-Region.svs: CC0 1.0, Carnegie Mellon University (OpenSlide test data).",
        "DejaVu Sans font: Bitstream Vera licence (DejaVu-fonts.txt).",
        "",
        "Bundled Python distributions (their licence files are in the folder of the same name):",
        *(f"  {r['name']} {r['version']}: {r['licence'] or 'see its folder'}" for r in rows),
    ]
    (out / "README.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"licences of {len(rows)} distributions in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
