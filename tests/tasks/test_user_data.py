"""The user's own data read into splits and cached: image folders of real PNGs written from the
digits data, .npz and .pt tensor files, and Python loaders."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from search.errors import TaskError
from search.tasks import user_data
from tasks.formats import digits, write_image_folder, write_png


def _read(text: str, base: Path, image_size=None, test_fraction: float = 0.1):
    return user_data.read(
        text, base, image_size=image_size, test_fraction=test_fraction, cache_dir=base / "cache"
    )


def test_a_plain_image_folder_keeps_its_pixels_and_holds_out_a_fixed_test_split(tmp_path) -> None:
    images, labels = digits(200)
    write_image_folder(tmp_path / "pngs", images, labels)
    data = _read("pngs", tmp_path)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert data.classes == tuple(str(i) for i in range(10))
    assert data.val is None
    assert len(data.train.targets) == 180 and len(data.test.targets) == 20
    assert data.fingerprint["test"] == "held out"
    # Lossless PNGs: every image read back is one that was written, with its own label.
    written = {bytes(image.numpy()): int(label) for image, label in zip(images, labels)}
    for split in (data.train, data.test):
        for image, label in zip(split.inputs, split.targets):
            assert written[bytes(image.numpy())] == int(label)
    assert data.train.inputs.dtype == torch.uint8
    # The held-out split is the same every time (seed 0), whatever the study.
    again = _read("pngs", tmp_path / "pngs" / "..")
    assert torch.equal(again.test.inputs, data.test.inputs)


def test_train_val_test_folders_in_colour_and_two_sizes_resized(tmp_path) -> None:
    small, labels = digits(120, colour=True)
    large, _ = digits(120, colour=True, size=12)
    root = tmp_path / "flowers"
    names = tuple(f"class-{i}" for i in range(10))
    write_image_folder(root / "training", small[:80], labels[:80], names)
    write_image_folder(root / "valid", large[80:100], labels[80:100], names)
    write_image_folder(root / "test", large[100:], labels[100:], names)
    data = _read("flowers", tmp_path, image_size=(10, 10))
    assert data.input_shape == (3, 10, 10)
    assert data.classes == names
    assert [len(s.targets) for s in (data.train, data.val, data.test)] == [80, 20, 20]
    assert data.fingerprint["test"] == "own"
    assert sorted(data.val.targets.tolist()) == sorted(labels[80:100].tolist())
    # Colour kept: the blue channel was empty when written, red and green were not.
    assert data.train.inputs[:, 2].max() == 0 and data.train.inputs[:, 0].max() > 0

    with pytest.raises(TaskError, match=r"images of different sizes: .* set task.image_size"):
        _read("flowers", tmp_path)


def test_grayscale_and_colour_images_in_one_folder_read_as_colour(tmp_path) -> None:
    gray, labels = digits(20)
    colour, _ = digits(20, colour=True)
    for i in range(20):
        folder = tmp_path / "mixed" / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        write_png(gray[i] if i < 10 else colour[i], folder / f"{i}.png")
    data = _read("mixed", tmp_path, test_fraction=0.2)
    assert data.input_shape == (3, 8, 8)
    # A grayscale image becomes three equal channels.
    everything = torch.cat([data.train.inputs, data.test.inputs])
    assert any(torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]) for x in everything)


def test_an_npz_in_keras_convention_gets_a_channel_and_keeps_its_validation_split(tmp_path) -> None:
    images, labels = digits(300)
    np.savez(
        tmp_path / "digits.npz",
        x_train=images[:200, 0].numpy(),
        y_train=labels[:200].numpy().astype(np.uint8),
        x_val=images[200:250, 0].numpy(),
        y_val=labels[200:250].numpy(),
        x_test=images[250:, 0].numpy(),
        y_test=labels[250:].numpy(),
    )
    data = _read("digits.npz", tmp_path)
    assert data.input_shape == (1, 8, 8)
    assert torch.equal(data.train.inputs, images[:200])
    assert torch.equal(data.val.targets, labels[200:250])
    assert torch.equal(data.test.targets, labels[250:])


def test_a_pt_dict_of_features_or_sequences(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(100, 6, generator=generator)
    labels = torch.arange(100) % 3
    torch.save({"x_train": features, "y_train": labels}, tmp_path / "table.pt")
    data = _read("table.pt", tmp_path)
    assert data.input_shape == (6,) and data.num_classes == 3
    assert data.train.inputs.dtype == torch.float32

    sequences = torch.randn(60, 2, 16, generator=generator)
    torch.save(
        {
            "x_train": sequences[:50],
            "y_train": labels[:50],
            "x_test": sequences[50:],
            "y_test": labels[50:60],
        },
        tmp_path / "signals.pt",
    )
    data = _read("signals.pt", tmp_path)
    assert data.input_shape == (2, 16)  # N×C×L float: sequences, not images
    assert torch.equal(data.test.inputs, sequences[50:])


def test_loaders_returning_tensors_or_a_dataset(tmp_path) -> None:
    (tmp_path / "load_digits_data.py").write_text(
        "import numpy as np\n"
        "import torch\n"
        "from torch.utils.data import Dataset\n"
        "from sklearn.datasets import load_digits\n"
        "\n"
        "def arrays():\n"
        "    d = load_digits()\n"
        "    x, y = d.images.astype('float32')[:, None], d.target\n"
        "    return (x[:300], y[:300]), (torch.from_numpy(x[300:400]), torch.from_numpy(y[300:400]))\n"
        "\n"
        "class Items(Dataset):\n"
        "    def __init__(self, n):\n"
        "        self.d = load_digits()\n"
        "        self.n = n\n"
        "    def __len__(self):\n"
        "        return self.n\n"
        "    def __getitem__(self, i):\n"
        "        return torch.tensor(self.d.images[i], dtype=torch.float32), int(self.d.target[i])\n"
        "\n"
        "def dataset():\n"
        "    return Items(250), None\n"
    )
    data = _read("load_digits_data.py:arrays", tmp_path)
    assert data.input_shape == (1, 8, 8)
    assert (len(data.train.targets), len(data.test.targets)) == (300, 100)
    assert data.fingerprint["kind"] == "loader"

    data = _read("load_digits_data.py:dataset", tmp_path)
    assert data.input_shape == (8, 8)  # float N×H×W: a sequence of 8 rows of 8 values
    assert (len(data.train.targets), len(data.test.targets)) == (225, 25)  # 10 % held out


def test_a_second_read_comes_from_the_cache_without_decoding(tmp_path) -> None:
    images, labels = digits(100)
    root = write_image_folder(tmp_path / "pngs", images, labels)
    first = _read("pngs", tmp_path)
    entries = list((tmp_path / "cache").glob("*.pt"))
    assert len(entries) == 1 and first.cache == entries[0]

    # Same names, sizes and times, other bytes: the listing says nothing changed, so nothing is
    # decoded (the garbage would not decode).
    victim = next(root.rglob("*.png"))
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = _read("pngs", tmp_path)
    assert torch.equal(second.train.inputs, first.train.inputs)
    assert second.fingerprint == first.fingerprint

    # A new modification time changes the key: the folder is read again, and the file is bad.
    os.utime(victim)
    with pytest.raises(TaskError, match=rf"cannot decode image pngs/.*{victim.name}"):
        _read("pngs", tmp_path)


def _read_in_child(base: str, out) -> None:
    data = _read("pngs", Path(base))
    out.put((str(data.cache), data.fingerprint["sha256"]))


def test_two_processes_filling_the_cache_at_once_both_get_a_whole_entry(tmp_path) -> None:
    images, labels = digits(400)
    write_image_folder(tmp_path / "pngs", images, labels)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    children = [context.Process(target=_read_in_child, args=(str(tmp_path), out)) for _ in range(2)]
    for child in children:
        child.start()
    results = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join()
    assert all(child.exitcode == 0 for child in children)
    assert results[0] == results[1]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(results[0][0]).name]
    assert user_data.open_cached(Path(results[0][0])).fingerprint["sha256"] == results[0][1]


@pytest.mark.parametrize(
    ("make", "text", "says"),
    [
        (lambda root: (root / "a").mkdir(parents=True), "pngs", "class folder 'a' has no images"),
        (
            lambda root: [
                write_png(image, root / f"{i}.png") for i, image in enumerate(digits(3)[0])
            ],
            "pngs",
            "folder pngs has no class subfolders (3 images lie directly in it)",
        ),
        (
            lambda root: write_image_folder(root / "val", *digits(10)),
            "pngs",
            "has val/ but no train/ (or training/) folder",
        ),
        (
            lambda root: (
                write_image_folder(root, *digits(10))
                and (root / "3" / "broken.png").write_bytes(b"\x89PNG broken")
            ),
            "pngs",
            "cannot decode image pngs/3/broken.png",
        ),
    ],
)
def test_bad_folders_say_what_is_wrong(tmp_path, make, text: str, says: str) -> None:
    (tmp_path / "pngs").mkdir()
    make(tmp_path / "pngs")
    with pytest.raises(TaskError, match=says.replace("(", r"\(").replace(")", r"\)")) as e:
        _read(text, tmp_path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "cache").exists()  # nothing cached from bad data


@pytest.mark.parametrize(
    ("arrays", "says"),
    [
        ({"x": np.zeros((4, 2))}, "data.npz has no x_train (its keys: x)"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(3, int)}, "4 inputs but 3 labels"),
        (
            {"x_train": np.zeros((4, 2)), "y_train": np.array([0.5, 1.25, 3.0, 0.75])},
            "labels are floats with 4 distinct values (0.5, 0.75, 1.25, ...); for a regression "
            'target, set task.kind = "regression"',
        ),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, -1, 1])}, "got -1"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 2, 2, 0])}, "but 1 never occurs"),
        (
            {"x_train": np.zeros((4, 2)), "y_train": np.eye(4, dtype=int)},
            "one-hot? pass y.argmax(1)",
        ),
        (
            {"x_train": np.zeros((8, 2)), "y_train": np.arange(8) % 2, "x_test": np.zeros((2, 2))},
            "has no y_test",
        ),
    ],
)
def test_bad_tensor_files_say_what_is_wrong(tmp_path, arrays, says: str) -> None:
    np.savez(tmp_path / "data.npz", **arrays)
    with pytest.raises(TaskError) as e:
        _read("data.npz", tmp_path)
    assert says in str(e.value), str(e.value)


def test_an_unreadable_cache_entry_is_decoded_again_and_replaced(tmp_path) -> None:
    images, labels = digits(60)
    write_image_folder(tmp_path / "pngs", images, labels)
    first = _read("pngs", tmp_path)
    first.cache.write_bytes(first.cache.read_bytes()[:100])  # a disk that filled up mid-write
    with pytest.raises(TaskError, match="unreadable"):
        user_data.open_cached(first.cache)
    again = _read("pngs", tmp_path)
    assert again.cache == first.cache
    assert torch.equal(again.train.inputs, user_data.open_cached(first.cache).train.inputs)
