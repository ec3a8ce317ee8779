"""`search bench loop` end to end on a small synthetic task: both loops, packed workers, JSON."""

from __future__ import annotations

import json
from pathlib import Path


def test_bench_loop_measures_both_loops_and_packed_workers(cli, tmp_path: Path) -> None:
    result = cli(
        "bench", "loop", "--task", "synthetic-mnist", "--examples", "800", "--batch-sizes",
        "32,128", "--workers", "2", "--json", "loop.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "SYNTHETIC" in result.stdout.splitlines()[0]
    payload = json.loads((tmp_path / "loop.json").read_text())
    rows = payload["rows"]
    assert [(r["loop"], r["batch_size"]) for r in rows] == [
        (loop, batch) for batch in (32, 128) for loop in ("reference", "harness", "harness ×2")
    ]
    for row in rows:
        assert row["images_per_second"] > 0
        reference = next(
            r for r in rows if r["loop"] == "reference" and r["batch_size"] == row["batch_size"]
        )
        ratio = row["images_per_second"] / reference["images_per_second"]
        assert abs(row["ratio"] - ratio) < 1e-9
        if row["loop"] == "harness ×2":
            assert row["seconds_per_epoch"] is None  # no single epoch time for several processes
        else:
            # 792 training images: 24 full batches of 32, 6 of 128.
            steps = 792 // row["batch_size"]
            per_second = steps * row["batch_size"] / row["seconds_per_epoch"]
            assert abs(per_second - row["images_per_second"]) / per_second < 1e-6


def test_bench_loop_refuses_a_task_without_8_bit_images(cli) -> None:
    result = cli("bench", "loop", "--task", "digits")
    assert result.returncode == 2
    assert "--task digits: the reference loop reads 8-bit images" in result.stderr
