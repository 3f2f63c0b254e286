#!/usr/bin/env bash
# Install Delineo for this user only (no root): the app into ~/.local/share/Delineo, the
# `delineo` command into ~/.local/bin, a menu entry and icon, and the slide file types.
# Run it from the unpacked folder: ./install-user.sh   (./install-user.sh --uninstall removes it)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${XDG_DATA_HOME:-$HOME/.local/share}"
bin="$HOME/.local/bin"
dest="$data/Delineo"

if [ "${1:-}" = --uninstall ]; then
  rm -rf "$dest" "$bin/delineo" "$data/applications/delineo.desktop" \
    "$data/icons/hicolor/256x256/apps/delineo.png" "$data/icons/hicolor/scalable/apps/delineo.svg" \
    "$data/mime/packages/delineo.xml"
  command -v update-mime-database >/dev/null && update-mime-database "$data/mime" >/dev/null 2>&1 || true
  command -v update-desktop-database >/dev/null && update-desktop-database "$data/applications" >/dev/null 2>&1 || true
  echo "Delineo removed (your settings and log in ~/.config/Delineo and ~/.local/state/Delineo are kept)."
  exit 0
fi

[ -x "$here/delineo" ] || { echo "install-user.sh: run it from the unpacked Delineo folder" >&2; exit 2; }
if [ "$here" != "$dest" ]; then
  rm -rf "$dest.new"
  mkdir -p "$data"
  cp -a "$here" "$dest.new"
  rm -rf "$dest"
  mv "$dest.new" "$dest"
fi
mkdir -p "$bin" "$data/applications" "$data/icons/hicolor/256x256/apps" \
  "$data/icons/hicolor/scalable/apps" "$data/mime/packages"
ln -sf "$dest/delineo" "$bin/delineo"
sed "s|^Exec=.*|Exec=\"$dest/delineo\" %f|" "$dest/delineo.desktop" >"$data/applications/delineo.desktop"
cp "$dest/delineo.png" "$data/icons/hicolor/256x256/apps/delineo.png"
cp "$dest/delineo.svg" "$data/icons/hicolor/scalable/apps/delineo.svg"
cat >"$data/mime/packages/delineo.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<mime-info xmlns="http://www.freedesktop.org/standards/shared-mime-info">
  <mime-type type="application/x-delineo-slide">
    <comment>Whole-slide image</comment>
    <glob pattern="*.svs"/><glob pattern="*.ndpi"/><glob pattern="*.mrxs"/><glob pattern="*.scn"/>
    <glob pattern="*.bif"/><glob pattern="*.vms"/><glob pattern="*.vmu"/><glob pattern="*.svslide"/>
  </mime-type>
</mime-info>
XML
command -v update-mime-database >/dev/null && update-mime-database "$data/mime" >/dev/null 2>&1 || true
command -v update-desktop-database >/dev/null && update-desktop-database "$data/applications" >/dev/null 2>&1 || true
echo "Delineo installed in $dest; run 'delineo' (in $bin) or pick Delineo in the applications menu."
case ":$PATH:" in *":$bin:"*) ;; *) echo "note: $bin is not on your PATH; add it to use 'delineo' in a terminal." ;; esac
