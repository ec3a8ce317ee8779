"""`FILE.py:NAME` and `module:NAME` references to the user's own code, and what they say when wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from search import references
from search.errors import TaskError


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_file_reference_is_relative_to_its_base_and_may_import_its_neighbours(tmp_path) -> None:
    _write(tmp_path / "models", "layers.py", "def width():\n    return 7\n")
    _write(
        tmp_path / "models",
        "nets.py",
        "from layers import width\n\ndef build():\n    return width()\n",
    )
    build = references.load("nets.py:build", tmp_path / "models")
    assert build() == 7
    # The same file imports once per process: the same function object again.
    assert references.load("nets.py:build", tmp_path / "models") is build


def test_a_module_reference_is_imported_from_the_current_directory(tmp_path, monkeypatch) -> None:
    _write(tmp_path / "mypkg", "__init__.py", "")
    _write(tmp_path / "mypkg", "zoo.py", "def build():\n    return 'zoo'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert references.load("mypkg.zoo:build", Path("/elsewhere"))() == "zoo"
    assert references.fingerprint("mypkg.zoo:build", Path("."))["file"] == str(
        (tmp_path / "mypkg" / "zoo.py").resolve()
    )


def test_a_fingerprint_changes_with_the_source(tmp_path) -> None:
    path = _write(tmp_path, "m.py", "def build():\n    return 1\n")
    before = references.fingerprint("m.py:build", tmp_path)
    path.write_text("def build():\n    return 2\n")
    after = references.fingerprint("m.py:build", tmp_path)
    assert before["file"] == after["file"] == str(path.resolve())
    assert before["sha256"] != after["sha256"]


@pytest.mark.parametrize(
    ("files", "reference", "says"),
    [
        ({}, "missing.py:build", "missing.py: no such file (looked for "),
        ({}, "nosuchpackage.models:build", "no module named 'nosuchpackage'"),
        (
            {"m.py": "def build():\n    pass\ndef helper():\n    pass\n_private = 1\n"},
            "m.py:biuld",
            "m.py has no 'biuld'; did you mean 'build'? (its callables: build, helper)",
        ),
        ({"m.py": "WIDTH = 3\n"}, "m.py:WIDTH", "m.py: 'WIDTH' is an int, not a callable"),
        (
            {"m.py": "import os\n\nx = 1\nraise ValueError('no GPU here')\n"},
            "m.py:build",
            "importing m.py failed: ValueError: no GPU here (m.py, line 4)",
        ),
        (
            {"m.py": "def build(:\n    pass\n"},
            "m.py:build",
            "importing m.py failed: SyntaxError: invalid syntax (m.py, line 1)",
        ),
        (
            {"m.py": "from helper import thing\n", "helper.py": "thing = undefined + 1\n"},
            "m.py:build",
            "importing m.py failed: NameError: name 'undefined' is not defined (helper.py, line 1)",
        ),
        ({}, "build", "is not a reference"),
        ({}, "models/:build", "is neither a .py file nor a dotted module name"),
    ],
)
def test_a_bad_reference_says_what_is_wrong_in_one_line(
    tmp_path, files: dict[str, str], reference: str, says: str
) -> None:
    for name, text in files.items():
        _write(tmp_path, name, text)
    with pytest.raises(TaskError) as e:
        references.load(reference, tmp_path)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_what_looks_like_a_reference() -> None:
    assert references.looks_like_reference("models.py:build")
    assert references.looks_like_reference("pkg.mod:build")
    assert not references.looks_like_reference("data/flowers")
    assert not references.looks_like_reference("data.npz")
    assert not references.looks_like_reference("cnn")
