"""A training function of your own: logistic regression on the bundled digits, its own loop."""

import torch
from sklearn.datasets import load_digits
from torch import nn


def train(params, report):
    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    (x, y), (val_x, val_y) = (x[:1400], y[:1400]), (x[1400:], y[1400:])
    model = nn.Linear(64, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])
    first = 1
    if report.restored is not None:  # this trial's worker died: go on from its last checkpoint
        model.load_state_dict(report.restored["model"])
        optimizer.load_state_dict(report.restored["optimizer"])
        first = report.restored["epoch"] + 1
    for epoch in range(first, report.epochs + 1):
        for i in range(0, len(x), params["batch_size"]):
            batch_x, batch_y = x[i : i + params["batch_size"]], y[i : i + params["batch_size"]]
            loss = nn.functional.cross_entropy(model(batch_x), batch_y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
        report(epoch, accuracy, loss=loss.item())  # stops here if the pruner says so
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        report.checkpoint(state)
    return accuracy, model  # the value; the model makes the study exportable
