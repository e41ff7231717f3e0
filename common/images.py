"""Image data: a participant's own files, read and validated as the ClientApp reads them.

A participant's data is either

* an ``.npz`` file with ``images`` (``N x H x W``, or ``N x 1 x H x W``; floats
  in ``[0, 1]`` or ``uint8`` in ``[0, 255]``) and ``labels`` (``N`` integers in
  ``[0, num_classes)``), or
* a folder of grey-scale PNGs with a ``labels.csv`` whose header is
  ``file,label``.

Every problem is reported as a :class:`DataError` that names the file.
"""

from __future__ import annotations

import csv
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from common.errors import UserError

__all__ = [
    "DataError",
    "ImageData",
    "load_image_data",
    "write_npz",
]

LABELS_CSV = "labels.csv"


class DataError(UserError, ValueError):
    """A data file is missing, unreadable or does not match the policy."""


@dataclass(frozen=True)
class ImageData:
    """Images as ``float32`` in ``[0, 1]`` with shape ``N x 1 x H x W``, labels as ``int64``."""

    images: NDArray[np.float32]
    labels: NDArray[np.int64]
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: NDArray[np.int64]) -> ImageData:
        return ImageData(self.images[index], self.labels[index], self.source)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """``(images, labels)``: model inputs first, labels last."""
        return torch.from_numpy(self.images), torch.from_numpy(self.labels)

    def sha256(self) -> str:
        """Manifest hash of the records as the client reads them (not of the file format).

        The same images and labels give the same hash whether they came from
        an ``.npz`` file or a PNG folder; any changed, added or removed
        record changes it. It keys the dataset's privacy accountant.
        """
        digest = hashlib.sha256()
        for array in (self.images, self.labels):
            contiguous = np.ascontiguousarray(array)
            digest.update(f"{contiguous.dtype.str}{contiguous.shape};".encode())
            digest.update(contiguous.tobytes())
        return digest.hexdigest()


def write_npz(path: Path, data: ImageData) -> None:
    """Write ``data`` in the participant file format (``images`` and ``labels``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=data.images[:, 0], labels=data.labels)


def load_image_data(path: str | Path, *, num_classes: int, image_size: int) -> ImageData:
    """Load and validate a participant's data (an ``.npz`` file or a PNG folder).

    Parameters
    ----------
    path : str or Path
        An ``.npz`` file, a folder holding exactly one ``.npz`` file, or a folder
        with ``labels.csv`` and PNG images.
    num_classes : int
        Labels must lie in ``[0, num_classes)``.
    image_size : int
        Images must be ``image_size x image_size`` pixels.

    Returns
    -------
    ImageData
        Validated images and labels.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / LABELS_CSV).exists():
            images, labels = _read_png_folder(path)
        else:
            candidates = sorted(path.glob("*.npz"))
            if len(candidates) != 1:
                raise DataError(
                    f"{path}: expected one .npz file or a {LABELS_CSV} with PNG "
                    f"images, found {len(candidates)} .npz files"
                )
            path = candidates[0]
            images, labels = _read_npz(path)
    else:
        images, labels = _read_npz(path)
    return _validate(path, images, labels, num_classes, image_size)


def _read_npz(path: Path) -> tuple[NDArray[np.generic], NDArray[np.generic]]:
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path}: not an .npz file (an .npz is a zip archive of .npy arrays, as "
            "numpy.savez writes it)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("images", "labels") if k not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {', '.join(missing)}; "
                    f"found {', '.join(archive.files) or 'none'}"
                )
            return archive["images"], archive["labels"]
    except DataError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError(
                f"{path}: holds pickled Python objects, which FedCommons never loads (they "
                "could run code); save plain numeric arrays"
            ) from None
        raise DataError(f"{path}: unreadable .npz file ({err})") from err
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: unreadable .npz file ({err})") from err


def _read_png_folder(folder: Path) -> tuple[NDArray[np.generic], NDArray[np.generic]]:
    from PIL import Image, UnidentifiedImageError

    csv_path = folder / LABELS_CSV
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: unreadable ({err})") from err
    if not rows or [c.strip() for c in rows[0]] != ["file", "label"]:
        raise DataError(f"{csv_path}: the first line must be the header 'file,label'")
    images: list[NDArray[np.generic]] = []
    labels: list[int] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise DataError(f"{csv_path}, line {line_no}: expected 2 columns, got {len(row)}")
        name, label = row[0].strip(), row[1].strip()
        try:
            labels.append(int(label))
        except ValueError:
            raise DataError(
                f"{csv_path}, line {line_no}: label {label!r} is not an integer"
            ) from None
        image_path = folder / name
        try:
            with Image.open(image_path) as img:
                images.append(np.asarray(img.convert("L"), dtype=np.uint8))
        except FileNotFoundError:
            raise DataError(f"{csv_path}, line {line_no}: image {image_path} not found") from None
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"{image_path}: unreadable image ({err})") from err
    if not images:
        raise DataError(f"{csv_path}: no images listed")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"{folder}: images have different sizes {sorted(shapes)}")
    return np.stack(images), np.asarray(labels)


def _validate(
    path: Path,
    images: NDArray[np.generic],
    labels: NDArray[np.generic],
    num_classes: int,
    image_size: int,
) -> ImageData:
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (image_size, image_size):
        raise DataError(
            f"{path}: images must have shape (N, {image_size}, {image_size}), "
            f"got {tuple(images.shape)}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{path}: labels must have shape ({images.shape[0]},) to match the "
            f"images, got {tuple(labels.shape)}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{path}: the data set is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    int_labels: NDArray[np.int64] = labels.astype(np.int64)
    bad = np.flatnonzero((int_labels < 0) | (int_labels >= num_classes))
    if bad.size:
        raise DataError(
            f"{path}: label {int_labels[bad[0]]} at index {bad[0]} is out of range "
            f"[0, {num_classes}) ({bad.size} bad labels)"
        )
    if images.dtype == np.uint8:
        scaled = images.astype(np.float32) / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise DataError(f"{path}: images contain NaN or infinite values")
        if images.min() < 0.0 or images.max() > 1.0:
            raise DataError(
                f"{path}: float images must lie in [0, 1], got "
                f"[{images.min():.3g}, {images.max():.3g}]"
            )
        scaled = images.astype(np.float32)
    else:
        raise DataError(f"{path}: images must be uint8 (0-255) or float (0-1), got {images.dtype}")
    return ImageData(scaled[:, None], int_labels, str(path))
