"""Whole training sample, this code against the previous release's code, side by side in one run.

The previous release is any git commit of this repository (default: the parent of the first
data-pipeline change, ``9c5b539^``), checked out with ``git worktree add --detach``. Both
trees read the same Cityscapes-layout frames (2048x1024 PNGs, written as ``bench_mixing.py``
does) through their own ``CityscapesDataset`` + ``train_transform(crop_size=(512, 1024))``;
each round runs one child process per tree (one thread, as a DataLoader worker), alternating,
so machine load affects both alike. Reports the median ms per sample of each tree and the
ratio, for the first read of each frame in a process (frames 1.. after a warm-up on frame 0)
and for later reads (a DataLoader worker kept across epochs; files checked once per process
are not checked again).

    python benchmarks/bench_data_pipeline_vs_previous.py --previous /tmp/prev [--frames 6] [--rounds 5] [--calls 3]
        [--tree LABEL=PATH ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]
from bench_mixing import cpu_name, load_average, write_frames  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

_CHILD = """
import sys, time, json
sys.path.insert(0, {tree!r})
import cv2, torch
cv2.setNumThreads(1); torch.set_num_threads(1)
import synthrel_lightning
assert synthrel_lightning.__file__.startswith({tree!r}), synthrel_lightning.__file__
from synthrel_lightning.data.cityscapes import CityscapesDataset
from synthrel_lightning.data.transforms import train_transform
extra = {{"output": "uint8"}} if {uint8!r} else {{}}
ds = CityscapesDataset({root!r}, split="train", transform=train_transform(crop_size=(512, 1024), seed=0, **extra))
ds[0]  # warm-up (imports, first allocations)
first, again = [], []
for c in range({calls}):
    for i in range(1, len(ds)):
        t = time.perf_counter(); ds[i]; (again if c else first).append(time.perf_counter() - t)
print(json.dumps([first, again]))
"""


def _run(tree: Path, root: Path, calls: int, uint8: bool = False) -> list[list[float]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH="")
    code = _CHILD.format(tree=str(tree.resolve()), root=str(root), calls=calls, uint8=uint8)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--previous", type=Path, required=True, help="checkout of the previous code (git worktree)")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2, help="passes over the frames per child process (>= 2)")
    parser.add_argument(
        "--tree", action="append", default=[], metavar="LABEL=PATH", help="another checkout to time beside them"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "-C", str(args.previous), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    here = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    trees = {
        f"previous ({commit})": (args.previous, False),
        "this code, float output": (REPO, False),
        "this code, uint8 output": (REPO, True),
        **{label: (Path(path), False) for label, path in (t.split("=", 1) for t in args.tree)},
    }
    first: dict[str, list[float]] = {k: [] for k in trees}
    again: dict[str, list[float]] = {k: [] for k in trees}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cs"
        write_frames(root, args.frames)
        for r in range(args.rounds):
            for name, (tree, uint8) in trees.items():
                a, b = _run(tree, root, args.calls, uint8)
                first[name] += a
                again[name] += b
            loads.append(load_average())
            print(f"round {r + 1}/{args.rounds} done (load {loads[-1]:.2f})", file=sys.stderr)
    ref1, ref2 = statistics.median(first[next(iter(trees))]), statistics.median(again[next(iter(trees))])
    print(f"CPU: {cpu_name()}; Python {platform.python_version()}; this code at {here.stdout.strip()}")
    print(f"load average per round: {', '.join(f'{x:.2f}' for x in loads)}")
    print("| pipeline | first read, ms/sample | vs previous | later reads, ms/sample | vs previous |")
    print("|---|---:|---:|---:|---:|")
    for name in trees:
        m1, m2 = statistics.median(first[name]), statistics.median(again[name])
        print(f"| {name} | {m1 * 1000:.1f} | {ref1 / m1:.2f}x | {m2 * 1000:.1f} | {ref2 / m2:.2f}x |")
    if args.json is not None:
        args.json.write_text(json.dumps({"first": first, "again": again}, indent=1))


if __name__ == "__main__":
    main()
