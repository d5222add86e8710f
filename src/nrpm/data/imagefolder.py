"""A user's own images, one folder per class: ``imagefolder:PATH`` (torchvision's ImageFolder convention).

Layout. ``PATH/<class>/<image>``: class index = position of the folder name in the sorted class names. PATH may
instead hold split folders, ``PATH/train/<class>/...`` and ``PATH/test/<class>/...`` (or ``PATH/val/`` where there
is no ``test/``, as ImageNet ships it); they must hold the same class names.

Splits (as for the named datasets: test = the first N test images, val = the last N training images):

* with split folders: test = the first N images of ``test/`` (else ``val/``), val = the last N of ``train/``;
* without: test = the first N images of PATH, val = the last N of PATH (the same images: they overlap when
  2N exceeds the count, which the description says).

Order. Files are sorted by name within each class, and the classes are interleaved (the first image of every
class, then the second, ...), so that the first N images cover every class rather than the first few.

Preprocessing. Each image is converted to RGB (L where the model takes one channel), resized so that its shorter
side is ``image_size`` (bilinear), centre-cropped to ``image_size`` x ``image_size`` (torchvision's
``Resize(size)`` + ``CenterCrop(size)``), and scaled to [0, 1]. Only the N images used are decoded. Needs Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .common import require

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderData", "load_imagefolder", "list_images", "split_folder"]

# torchvision's IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = ("train", "test", "val")


@dataclass
class ImageFolderData:
    x: torch.Tensor  # float32 (N, C, size, size) in [0, 1]
    y: torch.Tensor  # int64 (N,)
    classes: list[str]
    detected: str


def _class_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _has_split_folders(root: Path) -> bool:
    return any((root / name).is_dir() for name in SPLIT_FOLDERS)


def split_folder(root: Path, split: str) -> tuple[Path, str]:
    """(the folder split ``split`` reads, how it picks its N images); FileNotFoundError naming what is missing."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (expected PATH/<class>/<image> or "
                                f"PATH/{{train,test}}/<class>/<image>)")
    if not _has_split_folders(root):
        return root, "first" if split == "test" else "last"
    wanted = ("train",) if split == "val" else ("test", "val")
    for name in wanted:
        if (root / name).is_dir():
            return root / name, "first" if split == "test" else "last"
    raise FileNotFoundError(f"image folder {root} has split folders but no {' or '.join(f'{w}/' for w in wanted)}, "
                            f"which split {split!r} reads")


def _images_of(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not p.name.startswith(".")), key=lambda p: p.name)


def _check_same_classes(root: Path, classes: list[str]) -> None:
    """Split folders must agree on the class names, else one label would mean two classes."""
    for name in SPLIT_FOLDERS:
        other = root / name
        if other.is_dir() and [p.name for p in _class_folders(other)] != classes:
            raise ValueError(f"image folder {root}: the class folders of {name}/ differ from the other split's "
                             f"({[p.name for p in _class_folders(other)]} vs {classes}); every split needs the same")


def list_images(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(sorted class names, [(image, class index)] with the classes interleaved), errors naming the folder."""
    classes = _class_folders(folder)
    if not classes:
        raise ValueError(f"image folder {folder} has no class folders (expected {folder}/<class>/<image>)")
    per_class = []
    for label, class_dir in enumerate(classes):
        files = _images_of(class_dir)
        if not files:
            raise ValueError(f"class folder {class_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        per_class.append([(f, label) for f in files])
    longest = max(len(files) for files in per_class)
    ordered = [files[i] for i in range(longest) for files in per_class if i < len(files)]
    return [p.name for p in classes], ordered


def _read_image(path: Path, size: int, mode: str) -> np.ndarray:
    """One image as uint8 (size, size, C): shorter side resized to ``size``, centre crop, ``mode`` RGB or L."""
    image_module = require("PIL.Image", "Pillow", "imagefolder: reading images")
    try:
        with image_module.open(path) as image:
            image = image.convert(mode)
            width, height = image.size
            scale = size / min(width, height)
            # torchvision's Resize(int): the shorter side becomes size, the longer int(size * long / short)
            new_size = (size, int(height * scale)) if width <= height else (int(width * scale), size)
            image = image.resize(new_size, image_module.BILINEAR)
            left, top = int(round((new_size[0] - size) / 2.0)), int(round((new_size[1] - size) / 2.0))
            image = image.crop((left, top, left + size, top + size))
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:  # PIL: UnidentifiedImageError is an OSError
        raise ValueError(f"image {path} is not readable ({type(error).__name__}: {error})") from None
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _select(items: list, n: int, which: str, folder: Path) -> list:
    if n > len(items):
        raise ValueError(f"--n-samples {n} exceeds the {len(items)} images in {folder}: pass --n-samples "
                         f"{len(items)} or fewer")
    return items[:n] if which == "first" else items[len(items) - n:]


def load_imagefolder(root: str | Path, split: str = "test", n: int = 1000, *, image_size: int = 32,
                     channels: int = 3) -> ImageFolderData:
    """The N images split ``split`` takes from ``root`` (see the module docstring), float (N, C, S, S) in [0, 1]."""
    root = Path(root).expanduser()
    folder, which = split_folder(root, split)
    classes, images = list_images(folder)
    if folder != root:
        _check_same_classes(root, classes)
    chosen = _select(images, n, which, folder)
    mode = "L" if channels == 1 else "RGB"
    pixels = np.stack([_read_image(path, image_size, mode) for path, _ in chosen])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    y = torch.tensor([label for _, label in chosen], dtype=torch.int64)
    overlap = " (the same folder as the other split: first vs last images)" if folder == root else ""
    detected = (f"{folder}: {len(classes)} classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}), "
                f"{len(images)} images; the {which} {n}{overlap}, {mode} resized (shorter side) and centre-cropped "
                f"to {image_size}x{image_size}")
    return ImageFolderData(x, y, classes, detected)
