"""One table of `benchmarks/gpu.sh`'s results: the training loop's images/s against the reference
loop's at each batch size, then each 100-trial study's wall time, best and bookkeeping, then the
goals of the measurement met or not.

    python3 benchmarks/table.py RESULTS_FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: Path) -> None:
    loop = json.loads((folder / "loop.json").read_text())
    print(f"## {loop['device']}, torch {loop['torch']}\n")
    rows = loop["rows"]
    batches = sorted({r["batch_size"] for r in rows})
    loops = list(dict.fromkeys(r["loop"] for r in rows))
    print("| loop | " + " | ".join(f"batch {b}: images/s (× reference)" for b in batches) + " |")
    print("| --- |" + " --- |" * len(batches))
    cell = {(r["loop"], r["batch_size"]): r for r in rows}
    for name in loops:
        cells = [
            f"{cell[name, b]['images_per_second']:,.0f} ({cell[name, b]['ratio']:.1f}×)"
            if (name, b) in cell
            else ""
            for b in batches
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")

    print(
        "\n| study | wall s | × reference | best | bookkeeping, ms per trial (share of wall) |"
    )
    print("| --- | --- | --- | --- | --- |")
    studies = sorted(folder.glob("study-*.json"), key=lambda p: p.stat().st_mtime)  # as run
    walls: dict[str, float] = {}
    for path in studies:
        payload = json.loads(path.read_text())
        harness = payload["studies"][0]
        reference = payload["studies"][1] if len(payload["studies"]) > 1 else None
        space = path.stem.removeprefix("study-").split("-")[0]
        walls[path.stem] = harness["wall_seconds"]
        for timing in [harness] + ([reference] if reference else []):
            speedup = (
                f"{reference['wall_seconds'] / timing['wall_seconds']:.2f}×" if reference else ""
            )
            costs = timing["bookkeeping"]
            total = sum(costs[k] for k in ("sampling_ms", "storage_ms", "pruning_ms"))
            print(
                f"| {space}: {timing['loop']} | {timing['wall_seconds']:.1f} | {speedup} | "
                f"{timing['best']:.4f} | {total:.1f} ({100 * timing['bookkeeping_share']:.1f} %) |"
            )

    print()
    at64 = {r["loop"]: r for r in rows if r["batch_size"] == 64}
    single = max((r["ratio"] for n, r in at64.items() if n in ("harness", "captured")), default=0)
    per_gpu = max((r["images_per_second"] for r in at64.values()), default=0)
    digits = min(
        (w for n, w in walls.items() if n.startswith("study-digits")), default=float("nan")
    )
    for goal, value, met in (
        ("one trial at batch 64, × reference (goal ≥ 20)", f"{single:.1f}×", single >= 20),
        ("images/s per GPU at batch 64 (goal ≥ 300,000)", f"{per_gpu:,.0f}", per_gpu >= 300_000),
        ("100-trial digits study, wall s (goal ≤ 5)", f"{digits:.1f}", digits <= 5),
    ):
        print(f"- {goal}: {value}, {'met' if met else 'not met'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
