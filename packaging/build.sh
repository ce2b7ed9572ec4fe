#!/usr/bin/env bash
# Build the Linux artifacts: the PyInstaller onedir bundle, a tar.gz of it, and a .deb.
#
#   bash packaging/build.sh [--dist DIR] [--work DIR] [--no-tar] [--no-deb] [--deb-level 0-9]
#
# DIR defaults: dist/ and build/ in the project root.  Uses .venv (make setup).
# --deb-level: xz preset for the .deb; dpkg's default (6) takes ~2.5 min on 2 cores, 0 takes ~7 s
# for a .deb about 15% bigger (the frozen-build test uses 0).
# The bundle carries the build host's system libraries: build on the oldest
# distribution you support (platform-notes.md, Packaging).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST="$ROOT/dist"
WORK="$ROOT/build"
MAKE_TAR=1
MAKE_DEB=1
DEB_LEVEL=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dist) DIST="$(realpath -m "$2")"; shift 2 ;;
        --work) WORK="$(realpath -m "$2")"; shift 2 ;;
        --no-tar) MAKE_TAR=0; shift ;;
        --no-deb) MAKE_DEB=0; shift ;;
        --deb-level) DEB_LEVEL=("-z$2"); shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

PYINSTALLER="${PYINSTALLER:-$ROOT/.venv/bin/pyinstaller}"
[[ -x "$PYINSTALLER" ]] || { echo "build.sh: $PYINSTALLER not found; run 'make setup' first" >&2; exit 1; }
VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/app/__init__.py")"
[[ -n "$VERSION" ]] || { echo "build.sh: no __version__ in app/__init__.py" >&2; exit 1; }
umask 022
mkdir -p "$DIST" "$WORK"

# -- 1. the onedir bundle ----------------------------------------------------------------
started=$SECONDS
"$PYINSTALLER" --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK/pyinstaller" "$ROOT/packaging/controlroom.spec"
BUNDLE="$DIST/controlroom"
echo "bundle built in $((SECONDS - started)) s"
# A bundle that cannot even print its version is not worth packaging.
frozen_version="$("$BUNDLE/controlroom" --version)"
[[ "$frozen_version" == "controlroom $VERSION" ]] || {
    echo "build.sh: the frozen binary says '$frozen_version', expected 'controlroom $VERSION'" >&2; exit 1; }

ARTIFACTS=("$BUNDLE/")

# -- 2. a tarball of it, for any glibc Linux --------------------------------------------------
ARCH="$(uname -m)"
if [[ $MAKE_TAR == 1 ]]; then
    TARBALL="$DIST/controlroom-$VERSION-linux-$ARCH.tar.gz"
    tar -C "$DIST" -czf "$TARBALL" controlroom
    ARTIFACTS+=("$TARBALL")
fi

# -- 3. the .deb: /opt/controlroom, /usr/bin/controlroom, a menu entry and an icon ----------------
if [[ $MAKE_DEB == 1 ]] && ! command -v dpkg-deb >/dev/null; then
    echo "build.sh: no dpkg-deb on this system: the .deb is skipped"
    MAKE_DEB=0
fi
if [[ $MAKE_DEB == 1 ]]; then
    DEB_ARCH="$(dpkg --print-architecture)"
    GLIBC="$(getconf GNU_LIBC_VERSION | awk '{print $2}')"  # "glibc 2.36"; no `| head`: SIGPIPE + pipefail
    STAGE="$WORK/deb/controlroom_${VERSION}_$DEB_ARCH"
    rm -rf "$STAGE"
    mkdir -p "$STAGE/DEBIAN" "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/applications" \
        "$STAGE/usr/share/icons/hicolor/scalable/apps"
    cp -a "$BUNDLE" "$STAGE/opt/controlroom"
    ln -s /opt/controlroom/controlroom "$STAGE/usr/bin/controlroom"
    install -m 644 "$ROOT/packaging/linux/controlroom.desktop" "$STAGE/usr/share/applications/"
    install -m 644 "$ROOT/resources/icons/controlroom.svg" "$STAGE/usr/share/icons/hicolor/scalable/apps/"
    # What the bundle loads from the system rather than carrying (ldd of every bundled library):
    # glibc, GL/EGL, xcb and Wayland; the rest are the usual Qt desktop libraries and fonts, and the
    # time zones budgets and routing windows name (zoneinfo reads /usr/share/zoneinfo).
    cat > "$STAGE/DEBIAN/control" <<EOF
Package: controlroom
Version: $VERSION
Architecture: $DEB_ARCH
Maintainer: Control Room maintainers <controlroom@localhost>
Installed-Size: $(du -sk "$STAGE" | cut -f1)
Depends: libc6 (>= $GLIBC), libegl1, libgl1, libxcb1, libx11-6, libx11-xcb1, libxcb-cursor0,
 libxkbcommon0, libxkbcommon-x11-0, libwayland-client0, libwayland-cursor0, libwayland-egl1,
 libfontconfig1, libfreetype6, libdbus-1-3, libglib2.0-0t64 | libglib2.0-0, tzdata
Suggests: gnome-keyring
Section: devel
Priority: optional
Description: desktop control room for LLM API dependencies
 Control Room shows live latency, cost and failures of the LLM APIs a service
 depends on, and writes operator decisions (circuit breakers, routing,
 budgets, prompt versions) back to the gateways that enforce them.
EOF
    DEB="$DIST/controlroom_${VERSION}_$DEB_ARCH.deb"
    started=$SECONDS
    dpkg-deb --root-owner-group -Zxz "${DEB_LEVEL[@]}" --build "$STAGE" "$DEB" >/dev/null
    echo "deb built in $((SECONDS - started)) s"
    ARTIFACTS+=("$DEB")
fi

echo "artifacts:"
for artifact in "${ARTIFACTS[@]}"; do
    printf '  %-8s %s\n' "$(du -sh "$artifact" | cut -f1)" "$artifact"
done
