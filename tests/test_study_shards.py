"""Zoo shards: disjoint, merged bit for bit into the one-process result, refused when overlapping or incomplete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from synthrel_lightning.correlation.results import ResultsStore
from synthrel_lightning.study.run import run_paper_study
from synthrel_lightning.study.shards import Shard, ShardError, merge_shards, parse_shard, shard_entries, write_manifest
from synthrel_lightning.study.tiny import tiny_study


def test_parse_and_partition() -> None:
    assert parse_shard("2/5") == Shard(2, 5)
    for bad in ("5/5", "-1/3", "a/b", "1", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    items = list(range(11))
    parts = [shard_entries(items, Shard(i, 4)) for i in range(4)]
    assert sorted(x for p in parts for x in p) == items
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1 :])


def _fake_shard(edir: Path, i: int, n: int, models: list[str], config: str = "c") -> None:
    folder = edir / "shards" / f"{i}-of-{n}"
    store = ResultsStore(folder)
    for m in models:
        store.record_ok(m, {"s": {"miou": 0.5}}, 1.0)
    write_manifest(folder, Shard(i, n), models, config)


def test_merge_refuses_overlap_and_gaps(tmp_path: Path) -> None:
    zoo = ["a", "b", "c"]
    _fake_shard(tmp_path, 0, 2, ["a", "c"])
    with pytest.raises(ShardError, match=r"shard\(s\) 1/2 not found"):
        merge_shards(tmp_path, zoo, "c")
    _fake_shard(tmp_path, 1, 2, ["b", "c"])
    with pytest.raises(ShardError, match="overlap: model 'c'"):
        merge_shards(tmp_path, zoo, "c")
    _fake_shard(tmp_path, 1, 2, ["b"])
    assert list(merge_shards(tmp_path, zoo, "c").models) == zoo
    with pytest.raises(ShardError, match=r"do not cover the zoo: missing \['d'\]"):
        merge_shards(tmp_path, [*zoo, "d"], "c")
    _fake_shard(tmp_path, 2, 3, ["a"])
    with pytest.raises(ShardError, match="different ways"):
        merge_shards(tmp_path, zoo, "c")
    assert merge_shards(tmp_path, zoo, "another configuration") is None


def test_merged_shards_equal_one_process(tmp_path: Path) -> None:
    kwargs = tiny_study(tmp_path, models=3)
    kwargs.pop("calibration")
    one = run_paper_study(**{**kwargs, "stage": ["sets", "evaluate", "correlate"]})
    assert [o.status for o in one.outcomes] == ["ok", "ok", "ok"]
    split_dir = tmp_path / "split"
    (split_dir / "stages").mkdir(parents=True)
    shutil.copy(one.output_dir / "stages" / "sets.json", split_dir / "stages")  # the shards share the built sets
    sharded = {**kwargs, "output_dir": str(split_dir)}
    for i in (1, 0):
        run_paper_study(**{**sharded, "shard": f"{i}/2"})
    manifests = sorted((split_dir / "evaluate" / "shards").glob("*/shard.json"))
    assert [json.loads(p.read_text())["models"] for p in manifests] == [["tiny0", "tiny2"], ["tiny1"]]
    merged = run_paper_study(**{**sharded, "stage": ["evaluate", "correlate"]})
    assert merged.outcomes[0].summary["source"] == "shards"
    a = ResultsStore(one.output_dir / "evaluate").ok_metrics()
    b = ResultsStore(split_dir / "evaluate").ok_metrics()
    assert list(a) == list(b) == ["tiny0", "tiny1", "tiny2"]
    assert a == b  # every float equal, bit for bit
    ca = json.loads((one.output_dir / "correlate" / "correlations.json").read_text())["correlations"]
    cb = json.loads((split_dir / "correlate" / "correlations.json").read_text())["correlations"]
    strip = ("plot", "plot_files")
    assert [{k: v for k, v in r.items() if k not in strip} for r in ca] == [
        {k: v for k, v in r.items() if k not in strip} for r in cb
    ]


def test_shard_needs_the_stages_before_it(tmp_path: Path) -> None:
    kwargs = tiny_study(tmp_path, models=2)
    with pytest.raises(ValueError, match=r"stage\(s\) \['sets'\] are not done"):
        run_paper_study(**{**kwargs, "shard": "0/2"})
