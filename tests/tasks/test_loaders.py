"""Each task's loader reads real files through torchvision's own dataset classes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from search import tasks
from search.errors import TaskError

from .formats import write_cifar10, write_mnist


def test_digits_train_and_test_splits_are_disjoint_and_fixed() -> None:
    task = tasks.get("digits")
    train, test = task.load(None, False, True), task.load(None, False, False)
    assert train.inputs.shape[1:] == task.input_shape == (1, 8, 8)
    assert len(train.targets) + len(test.targets) == 1797
    assert len(test.targets) == round(1797 * 0.2)
    assert torch.equal(task.load(None, False, False).inputs, test.inputs)
    assert set(train.targets.tolist()) == set(range(10))


def test_digits_are_scikit_learns_own() -> None:
    from sklearn.datasets import load_digits

    from search.tasks.digits import bundled_digits

    images, labels = bundled_digits()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)


def test_mnist1d_is_the_standard_generated_dataset() -> None:
    task = tasks.get("mnist1d")
    numpy_state = np.random.get_state()[1].copy()
    train, test = task.load(None, False, True), task.load(None, False, False)
    # The generator seeds numpy's global state itself; ours is left as it was.
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert train.inputs.shape == (4000, *task.input_shape) == (4000, 1, 1, 40)
    assert test.inputs.shape == (1000, 1, 1, 40)
    assert torch.bincount(train.targets, minlength=10).min() > 300  # all ten digits, balanced
    # Deterministic: make_dataset's own seed (42), independent of anything we seed.
    from mnist1d.data import get_dataset_args, make_dataset

    reference = make_dataset(get_dataset_args())
    assert np.allclose(test.inputs[:, 0, 0].numpy(), reference["x_test"], atol=1e-6)
    assert np.array_equal(test.targets.numpy(), reference["y_test"])


@pytest.mark.parametrize(
    ("task_name", "class_name"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_mnist_style_loader_reads_idx_files(
    tmp_path: Path, task_name: str, class_name: str
) -> None:
    images, labels = write_mnist(tmp_path, class_name, n_train=50, n_test=20)
    task = tasks.get(task_name)
    train = task.load(tmp_path, False, True)
    assert train.inputs.shape == (50, 1, 28, 28) and train.inputs.dtype == torch.uint8
    assert torch.equal(train.inputs[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert torch.equal(train.targets, torch.from_numpy(labels).long())
    assert len(task.load(tmp_path, False, False).targets) == 20


def test_missing_mnist_lists_the_files_and_how_to_get_them(tmp_path: Path) -> None:
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(TaskError) as e:
        tasks.get("mnist").load(tmp_path, False, True)
    message = str(e.value)
    assert f"MNIST data not found in {tmp_path}" in message
    assert "train-labels-idx1-ubyte" in message and "t10k-images-idx3-ubyte" in message
    assert "train-images-idx3-ubyte," not in message  # present, so not listed
    assert "--download" in message


@pytest.fixture
def cifar_checksums(monkeypatch: pytest.MonkeyPatch):
    """CIFAR10 verifies md5 sums before reading; point its table at the files a test writes."""

    def use(md5: dict[str, str]) -> None:
        monkeypatch.setattr(
            datasets.CIFAR10,
            "train_list",
            [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)],
        )
        monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
        monkeypatch.setattr(
            datasets.CIFAR10, "meta", {**datasets.CIFAR10.meta, "md5": md5["batches.meta"]}
        )

    return use


def test_cifar10_loader_reads_the_python_pickles(tmp_path: Path, cifar_checksums) -> None:
    cifar_checksums(write_cifar10(tmp_path, per_batch=8))
    task = tasks.get("cifar10")
    train = task.load(tmp_path, False, True)
    assert train.inputs.shape == (40, 3, 32, 32) and task.augment
    first = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    # Rows are stored channel-major (1024 red, 1024 green, 1024 blue): the loader keeps NCHW.
    assert torch.equal(train.inputs[0], torch.from_numpy(first["data"][0].reshape(3, 32, 32)))
    assert train.targets[:8].tolist() == first["labels"]
    assert len(task.load(tmp_path, False, False).targets) == 8
    # The class names the task records for export are the ones torchvision reads from the meta.
    from torchvision.datasets import CIFAR10

    assert task.classes == tuple(CIFAR10(str(tmp_path), train=False).classes)


def test_corrupt_or_missing_cifar10_is_named(tmp_path: Path, cifar_checksums) -> None:
    cifar_checksums(write_cifar10(tmp_path, per_batch=4))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"truncated")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(TaskError) as e:
        tasks.get("cifar10").load(tmp_path, False, True)
    message = str(e.value)
    assert "data_batch_3" in message and "test_batch" in message
    assert "data_batch_1" not in message


def test_unknown_task() -> None:
    with pytest.raises(
        TaskError,
        match="unknown task 'imagenet'; known tasks: cifar10, digits, fashion-mnist, mnist",
    ):
        tasks.get("imagenet")
