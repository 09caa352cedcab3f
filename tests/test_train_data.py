"""Datasets and loaders of the training harness (bioplaus_kernels.train.data).

MNIST and Fashion-MNIST are checked against the original files in shared/data (skipped where absent) and on
small IDX files written here; CIFAR-10 on small pickle batches in the cifar-10-batches-py format written here;
ImageNet on a tiny ImageFolder tree of PNGs written here.
"""
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bioplaus_kernels.train.data import DATASETS, DataBundle, build_datasets, build_loaders
from bioplaus_kernels.train.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
# the repository's ../shared/data (a worktree in <work>/wt/<name> finds <work>/shared/data one level further up)
SHARED_DATA = Path(os.environ.get("BIOPLAUS_SHARED_DATA") or next(
    (p for p in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data") if p.is_dir()),
    ROOT.parent / "shared" / "data"))
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def _have(name):
    return all((SHARED_DATA / name / (f + ".gz")).is_file() for f in IDX_FILES)


# --------------------------------------------------------------------------------------------------- digits

def test_digits_split_sizes_stratified_and_complete():
    from sklearn.datasets import load_digits

    b = build_datasets("digits")
    assert isinstance(b, DataBundle)
    assert (b.name, b.num_classes, b.input_shape) == ("digits", 10, (1, 8, 8))
    assert (len(b.train), len(b.test)) == (1437, 360)
    y_train, y_test = b.train.targets, b.test.targets
    all_counts = np.bincount(load_digits().target, minlength=10)
    # stratified: every class's test share is within one image of 20 % of that class
    assert np.all(np.abs(np.bincount(y_test.numpy(), minlength=10) - 0.2 * all_counts) <= 1)
    # the two splits together are exactly the 1797 digits (as multisets of images), so none is lost or repeated
    everything = torch.from_numpy(load_digits().images).float().div(16).flatten(1)
    ours = torch.cat([b.train.images, b.test.images]).flatten(1)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(ours) == key(everything)
    assert torch.equal(torch.cat([y_train, y_test]).bincount(), torch.from_numpy(all_counts))


def test_digits_is_deterministic_and_normalised():
    a, b = build_datasets("digits"), build_datasets("digits")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.targets, b.test.targets)
    x = torch.stack([a.train[i][0] for i in range(len(a.train))])
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3  # normalised with train statistics
    assert a.train[0][0].min() >= (0 - a.train.mean) / a.train.std - 1e-6


# ---------------------------------------------------------------------------------------------------- loaders

def test_loaders_shapes_and_seeded_shuffling():
    b = build_datasets("digits")
    train, test = build_loaders(b, 64, seed=3, test_batch_size=100)
    x, y = next(iter(train))
    assert x.shape == (64, 1, 8, 8) and y.shape == (64,) and y.dtype == torch.int64
    assert len(train) == -(-1437 // 64) and len(test) == 4  # incomplete last batches are kept
    order = lambda loader: torch.cat([y for _, y in loader])  # noqa: E731
    first = order(build_loaders(b, 64, seed=3)[0])
    assert torch.equal(first, order(build_loaders(b, 64, seed=3)[0]))
    assert not torch.equal(first, order(build_loaders(b, 64, seed=4)[0]))
    assert not torch.equal(first, b.train.targets)  # shuffled
    assert torch.equal(order(test), b.test.targets)  # the test loader keeps the order
    assert not train.pin_memory or torch.cuda.is_available()


def test_loaders_with_workers_match_in_process_loading():
    b = build_datasets("digits")
    ys = [torch.cat([y for _, y in build_loaders(b, 128, workers=w, seed=1)[0]]) for w in (0, 2)]
    assert torch.equal(ys[0], ys[1])


def test_distributed_loaders_use_distributed_sampler(tmp_path):
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        train, test = build_loaders(build_datasets("digits"), 32, seed=5, distributed=True)
        assert isinstance(train.sampler, DistributedSampler) and isinstance(test.sampler, DistributedSampler)
        assert train.sampler.shuffle and not test.sampler.shuffle and train.sampler.seed == 5
        epoch0 = list(train.sampler)
        train.sampler.set_epoch(1)  # the loop's job every epoch
        assert sorted(epoch0) == sorted(train.sampler) and epoch0 != list(train.sampler)
    finally:
        dist.destroy_process_group()


def test_bad_names_and_batch_size():
    with pytest.raises(UsageError, match="unknown dataset 'svhn'; choose one of digits, mnist"):
        build_datasets("svhn")
    with pytest.raises(UsageError, match="batch size must be positive"):
        build_loaders(build_datasets("digits"), 0)
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10", "imagenet", "synthetic:imagenet",
                        "synthetic:cifar10", "synthetic:mnist")


# ------------------------------------------------------------------------------------- mnist, fashion-mnist

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader_on_the_original_files(name):
    if not _have(name):
        pytest.skip(f"{SHARED_DATA / name} does not hold the four original {name} IDX files")
    b = build_datasets(name, str(SHARED_DATA))  # a folder with one subfolder per dataset
    assert (b.name, b.num_classes, b.input_shape) == (name, 10, (1, 28, 28))
    assert (len(b.train), len(b.test)) == (60000, 10000)
    for split in (b.train, b.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 28, 28)
        assert split.targets.min() == 0 and split.targets.max() == 9
        assert torch.all(split.targets.bincount() > 800)  # every class present in quantity
    x, y = next(iter(build_loaders(b, 256)[0]))
    assert x.shape == (256, 1, 28, 28) and x.dtype == torch.float32 and 0 <= y.min() and y.max() <= 9
    # normalised with the dataset's usual statistics: the training set comes out near mean 0, std 1
    assert abs(b.train._normalised.mean().item()) < 0.01 and abs(b.train._normalised.std().item() - 1) < 0.01
    # the same files given directly as the folder
    direct = build_datasets(name, str(SHARED_DATA / name))
    assert torch.equal(direct.test.images, b.test.images)


def _write_idx(path, array, gz):
    """An IDX file: big-endian magic (0x08 = uint8, then the number of dimensions), the sizes, the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def _fake_idx(folder, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[split] = (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
        _write_idx(folder / f"{split}-images-idx3-ubyte", arrays[split][0], gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", arrays[split][1], gz)
    return arrays


@pytest.mark.parametrize("name,layout,gz", [("mnist", "MNIST/raw", False), ("fashion-mnist", "FashionMNIST/raw", True),
                                            ("mnist", ".", True), ("fashion-mnist", ".", False)])
def test_idx_loader_layouts(tmp_path, name, layout, gz):
    arrays = _fake_idx(tmp_path / layout, gz=gz)
    b = build_datasets(name, str(tmp_path))
    assert (len(b.train), len(b.test)) == (12, 5)
    for split, ds in (("train", b.train), ("t10k", b.test)):
        assert torch.equal(ds.images[:, 0], torch.from_numpy(arrays[split][0].astype(np.uint8)))
        assert torch.equal(ds.targets, torch.from_numpy(arrays[split][1]).long())
    mean, std = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}[name]
    x, y = b.train[3]
    torch.testing.assert_close(x, (torch.from_numpy(arrays["train"][0][3]).float()[None] / 255 - mean) / std)
    assert y == int(arrays["train"][1][3])


def test_idx_missing_and_corrupt_files(tmp_path):
    expected = (r"mnist: expected train-images-idx3-ubyte\[\.gz\], train-labels-idx1-ubyte\[\.gz\], "
                r"t10k-images-idx3-ubyte\[\.gz\], t10k-labels-idx1-ubyte\[\.gz\] in " + str(tmp_path) +
                r" \(or .*MNIST/raw, or .*mnist\); pass --data-dir")
    with pytest.raises(UsageError, match=expected):
        build_datasets("mnist", str(tmp_path))
    _fake_idx(tmp_path, gz=False)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(UsageError, match="fashion-mnist: expected .* in " + str(tmp_path)):
        build_datasets("fashion-mnist", str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(UsageError, match="mnist: cannot read .*t10k-labels-idx1-ubyte as an IDX file"):
        build_datasets("mnist", str(tmp_path))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4), gz=False)  # 4 labels for 5 images
    with pytest.raises(UsageError, match=r"mnist: t10k images \(5, 28, 28\) and labels \(4,\) do not form"):
        build_datasets("mnist", str(tmp_path))


# ---------------------------------------------------------------------------------------------------- cifar10

def _fake_cifar(root, per_batch=4, n_test=6, seed=0):
    """cifar-10-batches-py: pickled dicts with 'data' uint8 [n, 3072] (the R plane, then G, then B, each 32x32
    row-major) and 'labels', plus batches.meta with 'label_names'."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        batches[name] = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump({**batches[name], "batch_label": name}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return batches


def test_cifar10_loader_on_generated_batches(tmp_path):
    batches = _fake_cifar(tmp_path)
    b = build_datasets("cifar10", str(tmp_path), augment=False)
    assert (b.name, b.num_classes, b.input_shape, len(b.train), len(b.test)) == ("cifar10", 10, (3, 32, 32), 20, 6)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    x, y = b.train[5]  # the second image of data_batch_2
    raw = torch.from_numpy(batches["data_batch_2"]["data"][1]).view(3, 32, 32).float() / 255
    torch.testing.assert_close(x, (raw - mean) / std)
    assert y == batches["data_batch_2"]["labels"][1]
    x, y = b.test[2]
    raw = torch.from_numpy(batches["test_batch"]["data"][2]).view(3, 32, 32).float() / 255
    torch.testing.assert_close(x, (raw - mean) / std)
    # the folder itself may be given too
    assert torch.equal(build_datasets("cifar10", str(tmp_path / "cifar-10-batches-py")).test.images, b.test.images)


def test_cifar10_augmentation_crops_and_flips(tmp_path):
    _fake_cifar(tmp_path, per_batch=1)
    b = build_datasets("cifar10", str(tmp_path))
    torch.manual_seed(0)
    # RandomCrop pads the uint8 image with zeros, then the pixels are normalised
    padded_raw = torch.nn.functional.pad(b.train.images[0], (4, 4, 4, 4))
    padded = (padded_raw.float() / 255 - b.train.mean) / b.train.std
    seen = set()
    for _ in range(40):
        x, _ = b.train[0]
        assert x.shape == (3, 32, 32)
        match = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                 if torch.allclose(x, padded[:, dy:dy + 32, dx:dx + 32].flip(-1) if flip
                                   else padded[:, dy:dy + 32, dx:dx + 32])]
        assert match, "an augmented image is not a flipped or unflipped 32x32 crop of the 4-padded image"
        seen.add(match[0])
    assert len(seen) > 5 and {f for _, _, f in seen} == {False, True}
    torch.testing.assert_close(b.test[0][0], (b.test.images[0].float() / 255 - b.test.mean) / b.test.std)


def test_cifar10_missing_files(tmp_path):
    with pytest.raises(UsageError, match=r"cifar10: expected data_batch_1, .*test_batch, batches.meta in "
                                         + str(tmp_path / "cifar-10-batches-py") + r" .*; pass --data-dir"):
        build_datasets("cifar10", str(tmp_path))
    _fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="cifar10: cannot read"):
        build_datasets("cifar10", str(tmp_path))


# --------------------------------------------------------------------------------------------------- imagenet

def _fake_imagefolder(root, classes=("n01", "n02", "n03"), per_class=(2, 1)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(40, 80, 2)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_imagenet_imagefolder_loader(tmp_path):
    _fake_imagefolder(tmp_path)
    b = build_datasets("imagenet", str(tmp_path))
    assert (b.name, b.num_classes, b.input_shape, len(b.train), len(b.test)) == ("imagenet", 3, (3, 224, 224), 6, 3)
    train, test = build_loaders(b, 4, test_batch_size=3)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and set(y.tolist()) <= {0, 1, 2}
    x, y = next(iter(test))
    assert x.shape == (3, 3, 224, 224) and y.tolist() == [0, 1, 2]
    # evaluation transform is deterministic (resize 256, centre crop 224); training is random
    torch.testing.assert_close(b.test[1][0], b.test[1][0])
    assert not torch.equal(b.train[0][0], b.train[0][0])
    no_aug = build_datasets("imagenet", str(tmp_path), augment=False)
    torch.testing.assert_close(no_aug.train[0][0], no_aug.train[0][0])


def test_imagenet_missing_or_mismatched_tree(tmp_path):
    with pytest.raises(UsageError, match=r"imagenet: expected an ImageFolder tree .*/train/<class>/<image> and "
                                         r".*/val/<class>/<image>, but .*train is not a folder; pass --data-dir"):
        build_datasets("imagenet", str(tmp_path))
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(UsageError, match="imagenet: expected an ImageFolder tree"):
        build_datasets("imagenet", str(tmp_path))  # no class folders
    _fake_imagefolder(tmp_path / "b", per_class=(1, 1))
    os.rename(tmp_path / "b" / "val" / "n03", tmp_path / "b" / "val" / "n04")
    with pytest.raises(UsageError, match="class folders that differ"):
        build_datasets("imagenet", str(tmp_path / "b"))
