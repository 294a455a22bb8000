"""MultiMNIST and MultiFashion (Sener & Koltun, NeurIPS 2018), built from the original idx files.

Each example puts one item at the top-left of a 36x36 canvas ([0:28, 0:28]) and a second,
randomly drawn item at [6:34, 6:34], overlaps them by pixel maximum and resizes the canvas to
28x28. Two 10-class tasks: the class of the left (top-left) item and of the right item.

The frames hold 784 pixel columns ``p0..p783`` (row-major, values in [0, 1]) and the labels
``left`` and ``right``; pair them with ``model.encoder: {name: cnn, image_shape: [1, 28, 28]}``.
"""

from __future__ import annotations

import gzip
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from polytask.errors import DataError

SOURCES = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
# Both spellings occur in the wild: "train-images-idx3-ubyte.gz" and "train-images.idx3-ubyte.gz".
PARTS = {
    ("train", "images"): ("train-images-idx3-ubyte.gz", "train-images.idx3-ubyte.gz"),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz", "train-labels.idx1-ubyte.gz"),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz", "t10k-images.idx3-ubyte.gz"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz", "t10k-labels.idx1-ubyte.gz"),
}
CANVAS, SIDE, OFFSET = 36, 28, 6


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzip) as a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            zero, dtype_code, dims = struct.unpack(">HBB", handle.read(4))
            if zero != 0 or dtype_code != 0x08:
                raise DataError(f"{path} is not an unsigned-byte idx file")
            shape = struct.unpack(f">{dims}I", handle.read(4 * dims))
            data = np.frombuffer(handle.read(), dtype=np.uint8)
    except (OSError, EOFError, struct.error) as error:
        raise DataError(f"{path} could not be read as an idx file: {error}") from None
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {data.size} values, its header declares {shape}")
    return data.reshape(shape)


def _find(folder: Path, split: str, kind: str) -> Path | None:
    return next((folder / n for n in PARTS[(split, kind)] if (folder / n).is_file()), None)


def _read(folder: Path, split: str, kind: str) -> np.ndarray:
    path = _find(folder, split, kind)
    if path is None:
        raise DataError(f"multi_mnist: no {split} {kind} idx file in {folder}")
    return read_idx(path)


def _download(folder: Path, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for names in PARTS.values():
        if any((folder / n).is_file() for n in names):
            continue
        url = SOURCES[source] + names[0]
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                (folder / names[0]).write_bytes(response.read())
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise DataError(
                f"could not download {url} ({error}); without network, set "
                "data.dataset_options.path to a folder holding the four idx files"
            ) from None


def idx_folder(who: str, path: str | None, source: str, download: bool) -> Path:
    """The folder holding ``source``'s four idx files: ``path``, or the cache (downloaded
    there if missing and allowed); ``who`` names the dataset in errors."""
    if source not in SOURCES:
        raise DataError(f"{who}: source must be one of {', '.join(SOURCES)} (got {source!r})")
    folder = Path(path) if path is not None else Path.home() / ".cache" / "polytask" / source
    if any(_find(folder, s, k) is None for s, k in PARTS):
        if path is not None or not download:
            raise DataError(f"{who}: the four idx files are not all in {folder}")
        _download(folder, source)
    return folder


def overlay_pairs(images: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """[N, 28, 28] uint8 items and partner indices -> [N, 28, 28] float32 in [0, 1]."""
    canvas = torch.zeros(len(images), 1, CANVAS, CANVAS)
    left = torch.from_numpy(images.astype(np.float32) / 255.0)
    right = left[torch.from_numpy(partners)]
    canvas[:, 0, :SIDE, :SIDE] = left
    placed = canvas[:, 0, OFFSET : OFFSET + SIDE, OFFSET : OFFSET + SIDE]
    canvas[:, 0, OFFSET : OFFSET + SIDE, OFFSET : OFFSET + SIDE] = torch.maximum(placed, right)
    resized = F.interpolate(canvas, size=(SIDE, SIDE), mode="bilinear", antialias=True)
    return resized[:, 0].clamp_(0.0, 1.0).numpy()


def build_split(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    partners = rng.integers(0, len(images), size=len(images))
    pixels = overlay_pairs(images, partners).reshape(len(images), -1)
    frame = pd.DataFrame(pixels, columns=[f"p{i}" for i in range(SIDE * SIDE)])
    frame["left"] = labels.astype(np.int64)
    frame["right"] = labels[partners].astype(np.int64)
    return frame


def load_multi_mnist(
    path: str | None = None,
    source: str = "mnist",
    seed: int = 0,
    valid_fraction: float = 1 / 6,
    train_rows: int | None = None,
    download: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / valid / test frames. ``source`` is ``mnist`` or ``fashion_mnist``; ``path`` a folder
    with the four idx files (else ``~/.cache/polytask/<source>``, downloaded if missing).
    The validation rows are carved from the training pairs; ``train_rows`` subsamples the
    training pairs (after the split) for shorter schedules."""
    folder = idx_folder("multi_mnist", path, source, download)
    rng = np.random.default_rng(seed)
    train_full, test = (
        build_split(_read(folder, split, "images"), _read(folder, split, "labels"), rng)
        for split in ("train", "test")
    )
    order = rng.permutation(len(train_full))
    n_valid = round(valid_fraction * len(train_full))
    valid = train_full.iloc[np.sort(order[:n_valid])].reset_index(drop=True)
    train_order = np.sort(order[n_valid:])
    if train_rows is not None:
        train_order = np.sort(
            rng.choice(train_order, size=min(train_rows, len(train_order)), replace=False)
        )
    return train_full.iloc[train_order].reset_index(drop=True), valid, test
