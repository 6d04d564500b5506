"""Folder dataset reader: ``<root>/<split>/<class>/*.{jpeg,jpg,png}``.

The public casting dataset's layout (``casting_data/{train,test}/{def_front,ok_front}``)
works as is: class folder names are mapped to ``ok`` / ``defective`` by
:func:`class_of` (``ok*`` is good, ``def*``/``defect*``/``ng*``/``bad*`` is defective).
Images are read as 8-bit grayscale and resized (area) to the frame size when
they differ, so a user trains on their own line's images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff")
_OK = ("ok", "good", "pass")
_DEFECTIVE = ("def", "defect", "defective", "ng", "bad", "fail")


class DatasetError(ValueError):
    """A folder dataset that cannot be used, with a message that says why."""


def class_of(folder_name: str) -> int:
    """0 for a good-part folder, 1 for a defective one; raises for a name it cannot place."""
    name = folder_name.lower()
    if name.startswith(_DEFECTIVE):
        return 1
    if name.startswith(_OK):
        return 0
    raise DatasetError(
        f"class folder {folder_name!r} is neither good ({', '.join(_OK)}...) nor defective ({', '.join(_DEFECTIVE)}...)"
    )


@dataclass(frozen=True)
class FolderDataset:
    """The image files of one split with their labels (0 ok, 1 defective)."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]

    @classmethod
    def scan(cls, root: str | Path, split: str) -> FolderDataset:
        base = Path(root)
        if not base.is_dir():
            raise DatasetError(f"dataset folder {str(base)!r} does not exist")
        split_dir = base / split
        if not split_dir.is_dir():
            have = sorted(p.name for p in base.iterdir() if p.is_dir())
            raise DatasetError(
                f"dataset {str(base)!r} has no split {split!r} (found: {', '.join(have) or 'nothing'})"
            )
        files: list[Path] = []
        labels: list[int] = []
        class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
        if not class_dirs:
            raise DatasetError(f"split folder {str(split_dir)!r} has no class folders")
        for cdir in class_dirs:
            label = class_of(cdir.name)
            found = sorted(p for p in cdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DatasetError(
                    f"class folder {str(cdir)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                )
            files += found
            labels += [label] * len(found)
        if len(set(labels)) < 2:
            raise DatasetError(f"split {str(split_dir)!r} needs both good and defective class folders")
        return cls(tuple(files), tuple(labels))

    def __len__(self) -> int:
        return len(self.files)

    def load(self, size: int = 300) -> tuple[np.ndarray, np.ndarray]:
        """All images as (N, size, size) uint8 and labels as (N,) int64."""
        frames = np.stack([read_gray(p, size) for p in self.files])
        return frames, np.array(self.labels, dtype=np.int64)


def read_gray(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read an image file as 8-bit grayscale, resized (area) to ``size`` x ``size`` if given."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DatasetError(f"cannot read image {str(path)!r} (missing, unreadable or not an image)")
    if size is not None and img.shape != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img
