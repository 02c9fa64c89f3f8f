"""Data sets as tensors on one device: Palmer penguins, MNIST through torchvision, and the MNIST
test split shipped inside the package (the offline default for the CNN).

Every loader returns the same `Dataset` and fails with a `DataError` whose one-line message names
the path and what to do, because a missing file is the commonest first-run problem.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from fgray.config import TrainConfig

PENGUIN_FEATURES = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")
PENGUIN_SPECIES = ("Adelie", "Chinstrap", "Gentoo")

# The official MNIST test split, as listed in torchvision.datasets.MNIST.resources.
T10K_FILES = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_TRAIN_IMAGES, MNIST_TEST_IMAGES = 60_000, 10_000
# What torchvision's MNIST reads under its root (the .gz downloads are unpacked to these).
MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataError(RuntimeError):
    """Data missing, corrupt or unusable; the message names the path and the fix."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def to(self, device: str | torch.device) -> Dataset:
        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.num_classes,
        )


def load_data(config: TrainConfig) -> Dataset | None:
    """The data set a config asks for, on its device (None for the 2-D test functions)."""
    name = config.resolved_data
    if name == "none":
        return None
    if name == "penguins":
        data = penguins(config.data_seed, config.test_fraction)
    elif name == "mnist-t10k":
        data = mnist_t10k(config.data_seed, config.train_size, config.test_size)
    else:
        data = mnist(
            config.data_root, config.download, config.data_seed, config.train_size, config.test_size
        )
    check_finite(data)
    return data.to(config.device)


def check_available(config: TrainConfig, files: bool = True) -> int | None:
    """Training examples a trial of `config` would get, found without loading the images, or a
    DataError saying why it would get none: sizes beyond the data set, and (with `files`, where
    the driver's disk is the trials' disk) MNIST files that are not there. Checked before a
    sweep launches, so a spec that can never run is refused in a second, not after its retries."""
    name = config.resolved_data
    if name == "none":
        return None
    if name == "penguins":
        return len(penguins(config.data_seed, config.test_fraction).y_train)
    if name == "mnist-t10k":
        if config.train_size + config.test_size > MNIST_TEST_IMAGES:
            raise DataError(
                f"mnist-t10k has {MNIST_TEST_IMAGES} images; train_size {config.train_size} + "
                f"test_size {config.test_size} is more: lower them"
            )
        return config.train_size
    if config.train_size > MNIST_TRAIN_IMAGES or config.test_size > MNIST_TEST_IMAGES:
        raise DataError(
            f"MNIST has {MNIST_TRAIN_IMAGES} train / {MNIST_TEST_IMAGES} test images; "
            f"train_size {config.train_size} / test_size {config.test_size} is more"
        )
    if files and not config.download:
        root = config.data_root or default_mnist_root()
        raw = os.path.join(root, "MNIST", "raw")
        missing = [f for f in MNIST_RAW_FILES if not os.path.isfile(os.path.join(raw, f))]
        if not os.path.isdir(root):
            raise DataError(
                f"MNIST not found: data_root {root} does not exist; set data_root to where "
                "MNIST is, set download: true to fetch it, or use data: mnist-t10k offline"
            )
        if missing:
            raise DataError(
                f"MNIST not found under {root} (no {os.path.join(raw, missing[0])}); set "
                "download: true to fetch it, or use data: mnist-t10k offline"
            )
    return config.train_size


def check_finite(data: Dataset) -> None:
    """Refuse NaN or inf features with a message saying how many examples are affected."""
    for split, x in (("train", data.x_train), ("test", data.x_test)):
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(dim=tuple(range(1, x.dim()))).sum())
            raise DataError(
                f"{data.name}: {bad} {split} examples contain NaN or inf; "
                "clean the data before training"
            )


# -- Palmer penguins -------------------------------------------------------------------------------
def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, hold out round(test_fraction * n) rows chosen by `seed`; both sides sorted."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(test_fraction * len(rows)))
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=8)
def penguins(data_seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """4 standardized measurements -> 3 species; rows missing any of them are dropped."""
    try:
        import palmerpenguins
    except ImportError as exc:
        raise DataError(
            "the penguins data needs the palmerpenguins package: pip install palmerpenguins"
        ) from exc
    frame = palmerpenguins.load_penguins()
    frame = frame.dropna(subset=[*PENGUIN_FEATURES, "species"])
    x = frame[list(PENGUIN_FEATURES)].to_numpy(dtype=np.float64)
    y = frame["species"].map({s: i for i, s in enumerate(PENGUIN_SPECIES)}).to_numpy()
    train, test = _stratified_split(y, test_fraction, data_seed)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = (x - mean) / std  # train statistics only: the test rows stay unseen
    return Dataset(
        "penguins",
        torch.tensor(x[train], dtype=torch.float32),
        torch.tensor(y[train]),
        torch.tensor(x[test], dtype=torch.float32),
        torch.tensor(y[test]),
        num_classes=3,
    )


# -- MNIST -----------------------------------------------------------------------------------------
def _normalize_images(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


def _subset(
    n_total: int, train_size: int, test_size: int, seed: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if train_size + test_size > n_total:
        raise DataError(
            f"{what} has {n_total} images; train_size {train_size} + test_size "
            f"{test_size} is more: lower them"
        )
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return order[:train_size], order[train_size : train_size + test_size]


def t10k_dir() -> Path:
    return Path(str(resources.files("fgray") / "data_files" / "mnist"))


def _read_idx(path: Path, md5: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall fgray (pip install -e .) to restore it")
    raw = path.read_bytes()
    if hashlib.md5(raw).hexdigest() != md5:
        raise DataError(f"{path} is corrupt (md5 is not {md5}); reinstall fgray to restore it")
    data = gzip.decompress(raw)
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=4)
def mnist_t10k(
    data_seed: int = 0, train_size: int = 500, test_size: int = 100, directory: str | None = None
) -> Dataset:
    """MNIST's official 10k test split, md5-checked, cut by `data_seed` into disjoint pools."""
    root = Path(directory) if directory else t10k_dir()
    images = torch.from_numpy(
        _read_idx(
            root / "t10k-images-idx3-ubyte.gz", T10K_FILES["t10k-images-idx3-ubyte.gz"]
        ).copy()
    )
    labels = torch.from_numpy(
        _read_idx(
            root / "t10k-labels-idx1-ubyte.gz", T10K_FILES["t10k-labels-idx1-ubyte.gz"]
        ).copy()
    ).long()
    train, test = _subset(len(labels), train_size, test_size, data_seed, "mnist-t10k")
    x = _normalize_images(images)
    return Dataset("mnist-t10k", x[train], labels[train], x[test], labels[test], num_classes=10)


def default_mnist_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fgray", "mnist")


@functools.lru_cache(maxsize=4)
def mnist(
    root: str | None,
    download: bool,
    data_seed: int = 0,
    train_size: int = 500,
    test_size: int = 100,
) -> Dataset:
    """Full MNIST through torchvision: training images from its train split, test from its test."""
    from torchvision.datasets import MNIST

    root = root or default_mnist_root()
    try:
        train_set = MNIST(root, train=True, download=download)
        test_set = MNIST(root, train=False, download=download)
    except RuntimeError as exc:
        hint = (
            "pass --download (download: true) to fetch it, or use data: mnist-t10k offline"
            if not download
            else "check the network, or use data: mnist-t10k offline"
        )
        raise DataError(f"MNIST not found under {root} ({exc}); {hint}") from None
    except OSError as exc:
        raise DataError(f"MNIST under {root} could not be read or written ({exc})") from None
    except (ValueError, KeyError, IndexError, EOFError) as exc:  # files cut short or not MNIST
        raise DataError(
            f"MNIST under {root} is damaged ({type(exc).__name__}: {exc}); delete "
            f"{os.path.join(root, 'MNIST')} and download it again"
        ) from None
    generator = torch.Generator().manual_seed(data_seed)
    if train_size > len(train_set.targets) or test_size > len(test_set.targets):
        raise DataError(
            f"MNIST has {len(train_set.targets)} train / {len(test_set.targets)} test"
            f" images; train_size {train_size} / test_size {test_size} is more"
        )
    train = torch.randperm(len(train_set.targets), generator=generator)[:train_size]
    test = torch.randperm(len(test_set.targets), generator=generator)[:test_size]
    return Dataset(
        "mnist",
        _normalize_images(train_set.data[train]),
        train_set.targets[train],
        _normalize_images(test_set.data[test]),
        test_set.targets[test],
        num_classes=10,
    )
