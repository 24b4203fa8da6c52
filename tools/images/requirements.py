"""Prints what an image's Dockerfile installs, one requirement a line, for the wheelhouse.

    python tools/images/requirements.py operator|trainer [--torch VERSION] [--onnxruntime VERSION]

operator: the core dependencies and the [operator] extra. trainer: the core and [trainer]
requirements with onnxruntime swapped for onnxruntime-gpu (as trainer_image/Dockerfile does),
plus the pinned torch and onnxruntime-gpu[cuda,cudnn]. Both add the build backend, because `pip install .`
builds the project inside the image build.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def requirements(image: str, torch: str | None, onnxruntime: str | None) -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"][image])
    if image == "trainer":
        # Both wheels provide the `onnxruntime` module, so the GPU one replaces the CPU one.
        reqs = [re.sub(r"^onnxruntime(?![\w.-])", "onnxruntime-gpu", r) for r in reqs]
        reqs += [f"torch=={torch}"] if torch else []
        # The extras bring the CUDA libraries the provider needs that torch does not (cuRAND).
        reqs += [f"onnxruntime-gpu[cuda,cudnn]=={onnxruntime}"] if onnxruntime else []
    return reqs + list(pyproject["build-system"]["requires"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", choices=["operator", "trainer"])
    parser.add_argument("--torch")
    parser.add_argument("--onnxruntime")
    args = parser.parse_args()
    print("\n".join(requirements(args.image, args.torch, args.onnxruntime)))


if __name__ == "__main__":
    main()
