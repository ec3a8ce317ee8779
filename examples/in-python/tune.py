"""Tune a model, data and space that live in Python objects, on two worker processes."""

import shutil

from sklearn.datasets import load_digits
from torch import nn

import search


class SmallCNN(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(channels * 16, num_classes),
        )

    def forward(self, x):
        return self.body(x)


def build(input_shape, num_classes, channels):  # the task.model contract, as a function
    return SmallCNN(channels, num_classes)


digits = load_digits()
images, labels = digits.images.astype("float32")[:, None], digits.target
data = ((images[:1500], labels[:1500]), (images[1500:], labels[1500:]))  # (train, test)

space = {
    "task": {"epochs": 3},
    "params": {
        "lr": {"type": "float", "low": 1e-3, "high": 0.3, "log": True},
        "channels": {"type": "categorical", "choices": [8, 16, 32]},
    },
}

if __name__ == "__main__":  # the worker processes import this file again
    study = search.run(space=space, model=build, data=data, trials=20, jobs=2, study="in-python")
    print("best", study.best_value, study.best_params)
    shutil.rmtree("models/in-python", ignore_errors=True)
    exported = search.export("in-python", model=build, data=data, out="models/in-python")
    print("test accuracy", exported.metrics["test_accuracy"])
