"""Notebooks, executed headless by a real Jupyter kernel (nbclient, ipykernel): objects defined in
cells reach two worker processes, a study resumes and exports from the kernel, and the example
notebook runs end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import optuna
from nbclient import NotebookClient

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


def execute(notebook: nbformat.NotebookNode, folder: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh python3 kernel whose working folder is ``folder``; a cell that
    raises fails the test with the kernel's traceback."""
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()
    return notebook


def text_of(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def html_of(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.get("outputs", []))


CELLS = [
    '''
import search
from sklearn.datasets import load_digits
from torch import nn

digits = load_digits()
x, y = digits.images.astype("float32")[:, None], digits.target
data = ((x[:900], y[:900]), (x[900:1100], y[900:1100]))


class Net(nn.Module):  # a class of this cell: the workers get it by value
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x):
        return self.body(x)


def build(input_shape, num_classes, width):
    return Net(width)


space = """
[task]
epochs = 1

[params.lr]
type = "float"
low = 0.05
high = 0.5
log = true

[params.width]
type = "int"
low = 8
high = 32
"""
''',
    "study = search.run(space=space, model=build, data=data, trials=4, jobs=2)\n"
    "print('finished', len(study.trials))",
    "study = search.run(study='build', model=build, data=data, trials=5)\n"
    "print('finished', len(study.trials))",
    "exported = search.export('build', model=build, data=data, out='models/build')\n"
    "print('test', exported.metrics['test_accuracy'])",
    "search.report(study)",
]


def test_objects_of_notebook_cells_run_on_two_workers_resume_and_export(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    cells = execute(notebook, tmp_path).cells
    assert "running study build: 0 of 4 trials finished, running 4 more on 2 workers" in text_of(
        cells[1]
    )
    assert "finished 4" in text_of(cells[1])
    assert "finished 5" in text_of(cells[2])
    assert float(text_of(cells[3]).split("test ")[1]) > 0.5
    shown = html_of(cells[4])
    assert shown.startswith("<iframe srcdoc=") and "Learning curves" in shown
    study = optuna.load_study(study_name="build", storage=f"sqlite:///{tmp_path}/studies/build.db")
    # The trials ran in two processes: the worker's are there too.
    assert len({t.user_attrs["search.trial"]["seed"] for t in study.trials}) == 5
    source = study.user_attrs["search.fingerprints"]["model"]["source"]
    assert source.startswith("def build(input_shape, num_classes, width):")
    assert (tmp_path / "models" / "build" / "factory.pkl").is_file()


def test_the_example_notebook_runs_end_to_end(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / EXAMPLE.name)
    notebook = nbformat.read(tmp_path / EXAMPLE.name, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "the example notebook is committed without outputs"
    )
    cells = [c for c in execute(notebook, tmp_path).cells if c.cell_type == "code"]
    assert "Learning curves" in html_of(cells[3])
    accuracy = float(text_of(cells[4]).split("test accuracy ")[1].split()[0])
    assert accuracy > 0.8
    metrics = json.loads((tmp_path / "models" / "notebook-digits" / "metrics.json").read_text())
    assert abs(metrics["test_accuracy"] - accuracy) < 1e-3
    assert (tmp_path / "reports" / "notebook-digits.html").is_file()
    own = optuna.load_study(
        study_name="notebook-own-training",
        storage=f"sqlite:///{tmp_path}/studies/notebook-own-training.db",
    )
    assert own.best_value > 0.8 and len(own.trials) == 12
