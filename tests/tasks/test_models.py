from __future__ import annotations

import pytest
import torch

from search import spaces, tasks
from search.tasks import models

CASES = [
    (task, family, depth)
    for task in tasks.names()
    for family in tasks.get(task).models
    for depth in range(1, models.MAX_DEPTH[family] + 1)
]


@pytest.mark.parametrize(("task_name", "family", "depth"), CASES)
def test_every_depth_builds_and_trains_on_the_task_shape(
    task_name: str, family: str, depth: int
) -> None:
    task = tasks.get(task_name)
    torch.manual_seed(0)
    model = models.build(family, depth, task.input_shape, task.num_classes)
    x = torch.randn(3, *task.input_shape)
    logits = model(x)
    assert logits.shape == (3, task.num_classes)
    logits.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_every_shipped_space_uses_a_tested_combination() -> None:
    for path in spaces.SHIPPED_DIR.glob("*.toml"):
        space = spaces.load(path)
        depth = next(p for p in space.params if p.name == "depth").distribution
        for d in range(depth.low, depth.high + 1):
            assert (space.task, space.model, d) in CASES


def test_cnn1d_convolves_along_the_signal() -> None:
    model = models.build("cnn1d", 3, (1, 1, 40), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool1d)]
    assert len(pools) == 3  # 40 → 20 → 10 → 5 steps before global pooling
    assert model(torch.randn(2, 1, 1, 40)).shape == (2, 10)


def test_depth_outside_the_family_range_is_refused() -> None:
    with pytest.raises(Exception, match=r"depth must be in 1\.\.9, got 10"):
        models.build("resnet", 10, (3, 32, 32), 10)


def test_cnn_depth_is_the_number_of_conv_blocks() -> None:
    for depth in (1, 3, 6):
        model = models.build("cnn", depth, (1, 28, 28), 10)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == depth


def test_resnet_is_six_n_plus_two_layers_with_identity_shortcuts() -> None:
    model = models.build("resnet", 3, (3, 32, 32), 10)  # ResNet-20
    blocks = [m for m in model.modules() if isinstance(m, models.BasicBlock)]
    assert len(blocks) == 9
    weighted = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    projections = [b for b in blocks if not isinstance(b.shortcut, torch.nn.Identity)]
    assert len(weighted) - len(projections) == 20  # 1×1 projections are not counted as layers
    assert len(projections) == 2  # only where a stage halves the size and widens


def test_a_residual_block_adds_its_input() -> None:
    block = models.BasicBlock(16, 16, stride=1)
    # With the second batch norm zeroed the residual branch contributes nothing,
    # so an identity shortcut leaves relu(x).
    torch.nn.init.zeros_(block.bn2.weight)
    torch.nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x), torch.relu(x))
