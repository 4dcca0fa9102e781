"""The study command's configurations parse, ``--config demo`` names the packaged demo study, stages collect."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthrel_lightning.commands.study import DEMO_STUDY, _collect_stages, _resolve_demo, build_parser, main
from synthrel_lightning.study.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", [ROOT / "recipes" / "paper_study.yaml", DEMO_STUDY])
def test_configurations_parse(config: Path) -> None:
    cfg = build_parser().parse_args(["--config", str(config)])
    zoo = {e["name"] if isinstance(e, dict) else e.name for e in cfg.zoo}
    assert len(zoo) == len(cfg.zoo) >= 4
    refs = cfg.qc["references"]
    assert set(refs) <= zoo  # QC references are zoo entries


def test_demo_and_stage_arguments() -> None:
    assert _resolve_demo(["--config", "demo"]) == ["--config", str(DEMO_STUDY)]
    assert _collect_stages(["--stage", "qc", "--x", "1", "--stage=report,evaluate"]) == [
        "--x",
        "1",
        "--stage=[qc,report,evaluate]",
    ]
    assert set(STAGES) == {"sets", "zoo", "qc", "evaluate", "correlate", "calibration", "finetune", "report"}


def test_unknown_stage_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(DEMO_STUDY), "--output_dir", str(tmp_path), "--stage", "nope"])
    assert exit_info.value.code == 2
    assert "unknown stage(s) ['nope']" in capsys.readouterr().err
