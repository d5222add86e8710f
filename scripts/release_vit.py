"""Release the ViT trained by scripts/train_vit.sh: its weights as a plain state_dict shipped with nrpm
(src/nrpm/models/released/vit_tiny_cifar.pt, the registry's bundled_file), with the sha256 for the registry entry.

    .venv/bin/python scripts/release_vit.py RUN_DIR            # RUN_DIR/model.pt of a finished run
    .venv/bin/python scripts/release_vit.py RUN_DIR --partial  # the last finished epoch of an unfinished run

Prints the registry line; the clean test accuracy comes from `nrpm eval --model vit_tiny_cifar --lam 1
--budgets 0 --n-samples 10000` once the entry is in place (results/transformers/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import torch

from nrpm._io import atomic_write
from nrpm.formats import MODEL_FORMAT, read_tagged

RELEASED = Path(__file__).resolve().parents[1] / "src" / "nrpm" / "models" / "released" / "vit_tiny_cifar.pt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--partial", action="store_true", help="release an unfinished run's last epoch")
    args = parser.parse_args()
    saved = read_tagged(args.run_dir / "model.pt", (MODEL_FORMAT,), "an nrpm model file", "train it first")
    planned, done = saved["config"]["epochs"], saved["epoch"]
    if done < planned and not args.partial:
        print(f"{args.run_dir} has {done} of {planned} epochs: finish it (scripts/train_vit.sh) or pass --partial",
              file=sys.stderr)
        return 2
    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in saved["state_dict"].items()}, buffer)
    data = buffer.getvalue()
    atomic_write(RELEASED, lambda f: f.write(data), binary=True)
    digest = hashlib.sha256(data).hexdigest()
    print(f"{RELEASED} ({len(data) / 1e6:.2f} MB, epoch {done} of {planned})")
    print(f'pretrained=bundled_file("vit_tiny_cifar.pt", "{digest}", "scripts/train_vit.sh, epoch {done} of '
          f'{planned}")')
    return 0


if __name__ == "__main__":
    sys.exit(main())
