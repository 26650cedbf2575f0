#!/usr/bin/env bash
# Prepares what the thumbnail benchmarks compare against, `cargo bench -p prism-thumbnail --bench
# vs_libvips` and `prism-loadgen thumbnails`:
#   vipsthumbnail          Debian libvips-tools (apt-get install, needs root)
#   venv-pillow/           a venv with Pillow from PyPI
#   bench-images/          large real photos and art from Debian's wallpaper packages
#                          (plasma-workspace-wallpapers, gnome-backgrounds), sha256-checked:
#                          six 5120x2880 JPEGs, one 5120x2880 PNG, one 4096x4096 WebP
#   photos/                26 real photographs that `prism-loadgen dataset` makes photo sets from
#                          (fetch-photos.sh beside this script)
# All of it under ${PRISM_HOME:-$HOME/.cache/prism}, never in the repo.
# Idempotent: what is already there with the expected checksum is kept.
set -euo pipefail

PRISM_HOME="${PRISM_HOME:-$HOME/.cache/prism}"
IMAGES_DIR="$PRISM_HOME/bench-images"
DOWNLOADS_DIR="$PRISM_HOME/downloads"
PILLOW_VENV="$PRISM_HOME/venv-pillow"
PILLOW_VERSION=13.0.0

# name in bench-images, Debian package, path inside it, sha256
IMAGES=(
    "flow.jpg plasma-workspace-wallpapers usr/share/wallpapers/Flow/contents/images/5120x2880.jpg b2f1fbe9ebf772fed224de83ee4159cc3735c633a88cc42f8f45d49ccd12efc3"
    "flow-dark.jpg plasma-workspace-wallpapers usr/share/wallpapers/Flow/contents/images_dark/5120x2880.jpg 1798416959864c574fcafa333da73f30d810ae7aa9e65f68451c8a2345636b19"
    "honeywave.jpg plasma-workspace-wallpapers usr/share/wallpapers/Honeywave/contents/images/5120x2880.jpg e75adbd953e9b7dc8946223e7f1f2c4a9378496e7597198f65b095356995c7ad"
    "shell.jpg plasma-workspace-wallpapers usr/share/wallpapers/Shell/contents/images/5120x2880.jpg 220d5fe725453dba2329b6733cb7094d8615f2e0bbbb8a150e9f113101c02213"
    "safe-landing.jpg plasma-workspace-wallpapers usr/share/wallpapers/SafeLanding/contents/images/5120x2880.jpg 7341ff2532d1a13a2ba35f2a9219a2c6cb070446f1aae4ce9a3a981c3bedd32f"
    "volna.jpg plasma-workspace-wallpapers usr/share/wallpapers/Volna/contents/images/5120x2880.jpg abc30b4fc6f6a83b6156e6b59ac283c067de40af820aafac8ac7c4fd83a9607c"
    "milky-way.png plasma-workspace-wallpapers usr/share/wallpapers/MilkyWay/contents/images/5120x2880.png 777b501b626c0e8417167229187a787bbaf2b59c83f8343c18d1b0486e754296"
    "adwaita.webp gnome-backgrounds usr/share/backgrounds/gnome/adwaita-l.webp e2a2f6b559e574b76f302e2e854321ee0acbbd8e1891fce95269781e248aa045"
)

log() { printf 'bench-thumbnail: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

for tool in apt-get dpkg python3 sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' is required (this script expects Debian or Ubuntu)"
done

if ! command -v vipsthumbnail >/dev/null; then
    log "installing libvips-tools (vipsthumbnail)"
    [[ $EUID -eq 0 ]] || die "installing libvips-tools needs root: run 'sudo apt-get install libvips-tools' or this script as root"
    apt-get install -y -q libvips-tools >&2
fi
[[ -x /usr/bin/time ]] || {
    [[ $EUID -eq 0 ]] || die "/usr/bin/time is missing: run 'sudo apt-get install time'"
    apt-get install -y -q time >&2
}

if [[ ! -x "$PILLOW_VENV/bin/python" ]] || ! "$PILLOW_VENV/bin/python" -c "import PIL, sys; sys.exit(PIL.__version__ != '$PILLOW_VERSION')"; then
    log "making $PILLOW_VENV with Pillow $PILLOW_VERSION"
    python3 -m venv "$PILLOW_VENV"
    "$PILLOW_VENV/bin/python" -m pip install --quiet "pillow==$PILLOW_VERSION" >&2
fi

# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
copy_from_debian_packages "$IMAGES_DIR" "${IMAGES[@]}"

PRISM_HOME="$PRISM_HOME" "$(dirname "$0")/fetch-photos.sh"

log "ready: $IMAGES_DIR, $PILLOW_VENV, $(command -v vipsthumbnail), $PRISM_HOME/photos"
log "run: cargo bench -p prism-thumbnail --bench vs_libvips"
log "or:  cargo run --release -p prism-loadgen -- dataset --out SET && cargo run --release -p prism-loadgen -- thumbnails --dataset SET"
