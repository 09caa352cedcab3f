"""Datasets and loaders of the training harness.

``build_datasets(name, data_dir)`` returns a :class:`DataBundle` (train and test datasets yielding
``(image float32 [C, H, W], label int)``, ``num_classes``, ``input_shape``); ``build_loaders`` wraps it in
DataLoaders. Names and where their files are looked for:

- ``"digits"``: scikit-learn's ``load_digits`` (1797 real 8x8 handwritten digits shipped inside scikit-learn,
  no files needed). Fixed split: a stratified 80/20 train/test split (``train_test_split(test_size=0.2,
  stratify=labels, random_state=0)``: 1437 train, 360 test images, every class in the same proportion in both).
  Pixels (0..16) are divided by 16, then normalised with the mean and std of the training split.
- ``"mnist"`` / ``"fashion-mnist"``: the original IDX files ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or ``.gz``,
  read with torchvision's IDX reader. Looked for in ``data_dir``, then torchvision's layout
  ``data_dir/MNIST/raw`` (``FashionMNIST/raw``), then ``data_dir/mnist`` (``fashion-mnist``), so that a folder
  holding one subfolder per dataset works too. No augmentation (as in Bartunov et al. 2018).
- ``"cifar10"``: ``cifar-10-batches-py`` (the python pickle release) in ``data_dir`` or ``data_dir`` itself,
  read with ``torchvision.datasets.CIFAR10`` (``download=False``). Training augmentation: random 32x32 crops of
  the image zero-padded by 4 pixels and horizontal flips (the usual reading of the paper's "random crops and
  flips"; ``augment=False`` turns both off).
- ``"imagenet"``: an ImageFolder tree ``data_dir/train/<class>/*.JPEG`` and ``data_dir/val/<class>/*.JPEG``
  (the validation images sorted into class folders, as torchvision's and most ImageNet scripts expect);
  ``num_classes`` is the number of class folders, which must be the same in both.
  Training: RandomResizedCrop(224) + horizontal flip; evaluation: resize 256 + centre crop 224 (Xiao et al.
  2019's script, the standard torchvision recipe).

- ``"synthetic:<imagenet|cifar10|mnist>"``: no files; random images of that dataset's shape, class count and
  training-set size (1,281,167 / 50,000 / 60,000 images; a test split of 1,000), as the PyTorch ImageNet
  example's ``--dummy``, to measure a rule's images per second before the real data is copied. The images
  are a fixed pool of 256 standard-normal tensors (seed 0) indexed cyclically, so fetching one costs nothing
  next to a training step; labels cycle through the classes. Models and presets are those of the real dataset.

Every image is finally normalised per channel with the dataset's usual mean/std (MNIST 0.1307/0.3081,
Fashion-MNIST 0.2860/0.3530, CIFAR-10 and ImageNet the standard torchvision constants).

MNIST, Fashion-MNIST, CIFAR-10 and digits are held in memory as one uint8 (digits: float) tensor and augmented
as tensors, with no per-item PIL conversion. Randomness: shuffling uses a ``torch.Generator`` seeded from
``build_loaders(seed=...)``; augmentation draws from torch's global generator in the main process
(``workers=0``; seed it with ``torch.manual_seed``) and, with workers, from per-worker generators that
DataLoader seeds from the loader's generator, so runs are repeatable for a given seed and worker count.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import UsageError

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "imagenet", "synthetic:imagenet", "synthetic:cifar10",
            "synthetic:mnist")

# synthetic:<name>: (input shape, classes, training images); every synthetic test split has 1,000 images.
_SYNTHETIC = {"imagenet": ((3, 224, 224), 1000, 1_281_167), "cifar10": ((3, 32, 32), 10, 50_000),
              "mnist": ((1, 28, 28), 10, 60_000)}
_SYNTHETIC_TEST, _SYNTHETIC_POOL = 1000, 256


def real_name(dataset: str) -> str:
    """The dataset whose models and presets a dataset uses: itself, or X for synthetic:X."""
    return dataset.split(":", 1)[1] if dataset.startswith("synthetic:") else dataset

#: per-channel (mean, std) after scaling pixels to [0, 1]
_NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass
class DataBundle:
    """What a training run needs to know about its data."""
    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: Tuple[int, int, int]  # (C, H, W) of one input as the model receives it

    @property
    def like(self) -> str:
        """The dataset whose models and presets this one uses (real_name)."""
        return real_name(self.name)


class TensorImageDataset(Dataset):
    """Images held in memory as one tensor [N, C, H, W] (uint8 in 0..255, or float in [0, 1]).

    ``transform`` (optional) maps one [C, H, W] image to another of the same dtype (torchvision transforms work
    on tensors); the result is scaled to [0, 1] and normalised with ``mean`` / ``std`` (one value per channel).
    Without a transform the normalised float images are computed once here (for MNIST 190 MB), which makes an
    epoch of item fetches several times cheaper than normalising every item.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        if images.dim() != 4 or targets.shape != (images.shape[0],):
            raise ValueError(f"TensorImageDataset: expected images [N, C, H, W] and targets [N], got "
                             f"{tuple(images.shape)} and {tuple(targets.shape)}")
        self.images = images
        self.targets = targets.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.transform = transform
        self._normalised = self._normalise(images) if transform is None else None

    def _normalise(self, img: torch.Tensor) -> torch.Tensor:
        x = img.float().div_(255.0) if img.dtype == torch.uint8 else img.float()
        return (x - self.mean) / self.std

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if self._normalised is not None:
            return self._normalised[index], int(self.targets[index])
        return self._normalise(self.transform(self.images[index])), int(self.targets[index])


class SyntheticImages(Dataset):
    """``length`` items cycling through a pool of random images (see the module doc); label = index % classes."""

    def __init__(self, shape: Tuple[int, int, int], num_classes: int, length: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.pool = torch.randn(_SYNTHETIC_POOL, *shape, generator=g)
        self.num_classes, self.length = num_classes, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.pool[index % _SYNTHETIC_POOL], index % self.num_classes


def _synthetic(name: str) -> DataBundle:
    shape, classes, length = _SYNTHETIC[real_name(name)]
    return DataBundle(name, SyntheticImages(shape, classes, length), SyntheticImages(shape, classes, _SYNTHETIC_TEST),
                      classes, shape)


# --------------------------------------------------------------------------------------------------- digits

def _digits() -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # [1797, 1, 8, 8] in [0, 1]
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=DIGITS_TEST_FRACTION,
                                           stratify=labels.numpy(), random_state=DIGITS_SPLIT_SEED)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    mean = images[train_idx].mean().item()
    std = images[train_idx].std().item()
    train = TensorImageDataset(images[train_idx], labels[train_idx], (mean,), (std,))
    test = TensorImageDataset(images[test_idx], labels[test_idx], (mean,), (std,))
    return DataBundle("digits", train, test, 10, (1, 8, 8))


# ---------------------------------------------------------------------------------------- mnist, fashion-mnist

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")
#: torchvision's folder for each IDX dataset: <root>/<class name>/raw
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _find_idx_files(name: str, root: str) -> dict:
    """{file stem: path} from the first candidate folder holding all four IDX files (plain or .gz)."""
    candidates = [root, os.path.join(root, _TORCHVISION_FOLDER[name], "raw"), os.path.join(root, name)]
    for folder in candidates:
        found = {}
        for stem in _IDX_FILES:
            for path in (os.path.join(folder, stem), os.path.join(folder, stem + ".gz")):
                if os.path.isfile(path):
                    found[stem] = path
                    break
        if len(found) == len(_IDX_FILES):
            return found
    expected = ", ".join(stem + "[.gz]" for stem in _IDX_FILES)
    raise UsageError(f"{name}: expected {expected} in {root} (or {candidates[1]}, or {candidates[2]}); "
                     f"pass --data-dir")


def _read_idx(name: str, path: str, reader: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Read one IDX file with torchvision's reader, which takes uncompressed files only: a .gz file is
    decompressed to a temporary file first."""
    try:
        if not path.endswith(".gz"):
            return reader(path)
        with tempfile.TemporaryDirectory(prefix="bioplaus_idx_") as tmp:
            plain = os.path.join(tmp, os.path.basename(path)[:-3])
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return reader(plain)
    except (OSError, AssertionError, ValueError, TypeError, RuntimeError, EOFError) as e:
        raise UsageError(f"{name}: cannot read {path} as an IDX file ({type(e).__name__}: {e})") from e


def _idx_dataset(name: str, root: str, augment: bool) -> DataBundle:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    files = _find_idx_files(name, root)
    mean, std = _NORMALISATION[name]
    splits = []
    for split in ("train", "t10k"):
        images = _read_idx(name, files[f"{split}-images-idx3-ubyte"], read_image_file)
        labels = _read_idx(name, files[f"{split}-labels-idx1-ubyte"], read_label_file)
        if images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
            raise UsageError(f"{name}: {split} images {tuple(images.shape)} and labels {tuple(labels.shape)} do not "
                             f"form N 28x28 images with N labels")
        splits.append(TensorImageDataset(images.unsqueeze(1), labels, mean, std))
    return DataBundle(name, splits[0], splits[1], 10, (1, 28, 28))


# ---------------------------------------------------------------------------------------------------- cifar10

def _cifar10(root: str, augment: bool) -> DataBundle:
    from torchvision import transforms
    from torchvision.datasets import CIFAR10

    class _CIFAR10Files(CIFAR10):
        """torchvision's reader without its MD5 checks: files are only required to exist (a re-packed or
        subset copy loads too, and 180 MB are not hashed on every start)."""
        train_list = [[f, None] for f, _ in CIFAR10.train_list]
        test_list = [[f, None] for f, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    folder = CIFAR10.base_folder
    candidates = [root, os.path.dirname(os.path.normpath(root)), os.path.join(root, "cifar10")]
    expected = [f for f, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    base = next((c for c in candidates
                 if all(os.path.isfile(os.path.join(c, folder, f)) for f in expected)), None)
    if base is None:
        raise UsageError(f"cifar10: expected {', '.join(expected)} in {os.path.join(root, folder)} (or "
                         f"{os.path.join(root, 'cifar10', folder)}); pass --data-dir")
    mean, std = _NORMALISATION["cifar10"]
    # random 32x32 crops of the zero-padded image and horizontal flips, on uint8 CHW tensors
    augmentation = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])
    splits = []
    for train in (True, False):
        try:
            raw = _CIFAR10Files(base, train=train, download=False)
        except Exception as e:  # pickle, shape or key errors of a damaged file: one line for the user
            raise UsageError(f"cifar10: cannot read {os.path.join(base, folder)} ({type(e).__name__}: {e})") from e
        images = torch.from_numpy(raw.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
        splits.append(TensorImageDataset(images, torch.tensor(raw.targets), mean, std,
                                         augmentation if train and augment else None))
    return DataBundle("cifar10", splits[0], splits[1], 10, (3, 32, 32))


# --------------------------------------------------------------------------------------------------- imagenet

def _load_image(path: str):
    """An RGB PIL image; a truncated or unreadable file is a UsageError naming it (PIL's own message does not)."""
    from PIL import Image
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated data, not an image, broken header
        raise UsageError(f"imagenet: cannot read image {path} ({type(e).__name__}: {e})") from None


def _imagenet(root: str, augment: bool) -> DataBundle:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    where = f"expected an ImageFolder tree {os.path.join(root, 'train')}/<class>/<image> and " \
            f"{os.path.join(root, 'val')}/<class>/<image>"
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise UsageError(f"imagenet: {where}, but {os.path.join(root, split)} is not a folder; pass --data-dir")
    normalise = transforms.Normalize(*_NORMALISATION["imagenet"])
    evaluation = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                     normalise])
    training = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalise]) if augment else evaluation
    try:
        train = ImageFolder(os.path.join(root, "train"), transform=training, loader=_load_image)
        test = ImageFolder(os.path.join(root, "val"), transform=evaluation, loader=_load_image)
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"imagenet: {where} ({e})") from e
    if test.classes != train.classes:
        raise UsageError(f"imagenet: {os.path.join(root, 'val')} has {len(test.classes)} class folders that differ "
                         f"from the {len(train.classes)} in {os.path.join(root, 'train')}; both need the same classes")
    return DataBundle("imagenet", train, test, len(train.classes), (3, 224, 224))


# ---------------------------------------------------------------------------------------------------- loaders

def build_datasets(name: str, data_dir: Optional[str] = None, *, augment: bool = True) -> DataBundle:
    """The train and test datasets of ``name`` (one of :data:`DATASETS`); see the module docstring for where the
    files are looked for. ``data_dir`` defaults to ``./data``. ``augment=False`` turns off training
    augmentation (evaluation transforms are always applied). Missing or unreadable data raises
    :class:`UsageError` naming the files expected and where."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name.startswith("synthetic:"):
        return _synthetic(name)
    if name == "digits":
        return _digits()  # no augmentation for digits
    root = os.path.expanduser(data_dir if data_dir is not None else "data")
    return _BUILDERS[name](root, augment)


def build_loaders(bundle: DataBundle, batch_size: int, *, workers: int = 0, seed: int = 0,
                  distributed: bool = False, pin_memory: Optional[bool] = None,
                  test_batch_size: Optional[int] = None) -> Tuple[DataLoader, DataLoader]:
    """(train_loader, test_loader) for ``bundle``.

    - The training loader shuffles with a ``torch.Generator`` seeded with ``seed`` (same order for the same seed)
      and keeps incomplete last batches.
    - ``distributed=True`` (torch.distributed initialised): both loaders use a ``DistributedSampler`` (the train
      one shuffling with ``seed``, the test one not), so each rank sees its 1/world_size share; ``batch_size``
      is then the per-rank batch. The training loop must call ``train_loader.sampler.set_epoch(epoch)`` before
      every epoch, or every epoch repeats the same order. The test sampler pads the last ranks with repeated
      samples to equal shares (DistributedSampler's behaviour), so a test metric averaged across ranks can count
      up to world_size - 1 images twice.
    - ``pin_memory`` defaults to ``torch.cuda.is_available()``; ``workers > 0`` keeps workers alive between
      epochs.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    test_batch_size = test_batch_size or batch_size
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    common = dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)
    generator = torch.Generator().manual_seed(seed)
    if distributed:
        from torch.utils.data.distributed import DistributedSampler
        train_sampler = DistributedSampler(bundle.train, shuffle=True, seed=seed)
        test_sampler = DistributedSampler(bundle.test, shuffle=False)
        train = DataLoader(bundle.train, batch_size, sampler=train_sampler, generator=generator, **common)
        test = DataLoader(bundle.test, test_batch_size, sampler=test_sampler, **common)
    else:
        train = DataLoader(bundle.train, batch_size, shuffle=True, generator=generator, **common)
        test = DataLoader(bundle.test, test_batch_size, shuffle=False, **common)
    return train, test


_BUILDERS = {
    "digits": None,  # needs no folder; handled before data_dir is resolved
    "mnist": lambda root, augment: _idx_dataset("mnist", root, augment),
    "fashion-mnist": lambda root, augment: _idx_dataset("fashion-mnist", root, augment),
    "cifar10": _cifar10,
    "imagenet": _imagenet,
}
