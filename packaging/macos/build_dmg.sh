#!/usr/bin/env bash
# Build "Control Room.app" and a .dmg on macOS:  bash packaging/macos/build_dmg.sh
# Needs the project venv (make setup) and Xcode's command line tools (iconutil, hdiutil).
# The .app is ad-hoc signed by PyInstaller; signing with a Developer ID and notarizing are
# separate steps for the release runner (codesign --deep --options runtime, xcrun notarytool).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIST="$ROOT/dist"
WORK="$ROOT/build/macos"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/app/__init__.py")"
rm -rf "$WORK"
mkdir -p "$WORK/icon.iconset" "$DIST"

# The icon: render the SVG with Quick Look, then every size iconutil wants.
qlmanage -t -s 1024 -o "$WORK" "$ROOT/resources/icons/controlroom.svg" >/dev/null
for size in 16 32 128 256 512; do
    sips -z $size $size "$WORK/controlroom.svg.png" --out "$WORK/icon.iconset/icon_${size}x${size}.png" >/dev/null
    sips -z $((size * 2)) $((size * 2)) "$WORK/controlroom.svg.png" \
        --out "$WORK/icon.iconset/icon_${size}x${size}@2x.png" >/dev/null
done
iconutil -c icns "$WORK/icon.iconset" -o "$WORK/controlroom.icns"

CONTROLROOM_ICNS="$WORK/controlroom.icns" "$ROOT/.venv/bin/pyinstaller" --noconfirm --clean \
    --distpath "$DIST" --workpath "$WORK/pyinstaller" "$ROOT/packaging/controlroom.spec"
APP="$DIST/Control Room.app"
"$APP/Contents/MacOS/controlroom" --version

# The disk image: the .app and a link to /Applications to drag it onto.
STAGE="$WORK/dmg"
mkdir -p "$STAGE"
ditto "$APP" "$STAGE/Control Room.app"
ln -s /Applications "$STAGE/Applications"
DMG="$DIST/ControlRoom-$VERSION-macos-$(uname -m).dmg"
rm -f "$DMG"
hdiutil create -volname "Control Room" -srcfolder "$STAGE" -fs HFS+ -format UDZO -ov "$DMG"
echo "artifacts:"
du -sh "$APP" "$DMG"
