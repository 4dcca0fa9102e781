"""benchmarks/bench_fit_gpu.py at a tiny size on the CPU: correctness of what it measures, never timings."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from synthrel_lightning.labels import OOD_ID

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fit_gpu.py"


@pytest.fixture(scope="module")
def bench():
    """The benchmark script, imported as a module."""
    spec = importlib.util.spec_from_file_location("bench_fit_gpu", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fit_gpu"] = module  # pickled by name in forked frame writers
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_fit_gpu", None)


def _tiny(bench, **overrides):
    values = dict(
        device="cpu",
        frame_size=(64, 128),
        crop_size=(32, 64),
        batch_size=2,
        workers=1,
        steps=2,
        warmup=1,
        rounds=1,
        unique_frames=2,
        bank_size=4,
        object_size=(8, 24),
        probability=1.0,
        memory_batches=2,
    )
    values.update(overrides)
    return bench.FitBenchConfig(**values)


def test_three_modes_train_on_batches_of_one_shape(bench, tmp_path):
    rounds = []
    record = bench.run_benchmark(_tiny(bench), workdir=tmp_path, on_round=rounds.append)
    assert set(record["modes"]) == {"a", "b", "c"} and set(record["ratios"]) == {"b/a", "c/a"}
    for mode, result in record["modes"].items():
        assert math.isfinite(result["images_per_s"]) and result["images_per_s"] > 0, mode
        assert 0 <= result["wait_fraction"] < 1, mode
        (run,) = result["rounds"]
        assert run["timed_steps"] == 2, mode
        # images/s is the timed images over the timed span
        assert run["images_per_s"] == pytest.approx(2 * 2 / run["elapsed_s"])
    batches = {mode: r["batch"] for mode, r in record["modes"].items()}
    assert batches["a"] == batches["b"] == batches["c"]
    assert batches["a"]["image"]["shape"] == [2, 3, 32, 64]
    assert batches["a"]["label"]["shape"] == [2, 32, 64]
    assert record["ratios"]["c/a"] == pytest.approx(
        record["modes"]["c"]["images_per_s"] / record["modes"]["a"]["images_per_s"]
    )
    assert record["data_wait_fraction_beyond_a"]["b"] == pytest.approx(
        record["modes"]["b"]["wait_fraction"] - record["modes"]["a"]["wait_fraction"]
    )
    # Mode c mixes outliers (p = 1); b does not; a serves the mixed loader's batches.
    assert record["modes"]["b"]["ood_pixel_fraction"] == 0
    assert record["modes"]["c"]["ood_pixel_fraction"] > 0
    assert record["modes"]["a"]["ood_pixel_fraction"] > 0
    assert record["losses_compiled"] is False and "CUDA only" in record["compile_note"]
    assert record["machine"]["cpu_count"] >= 1 and record["machine"]["torch"] == torch.__version__
    assert len(rounds) == 1 and json.loads(json.dumps(rounds[0]))["rounds_done"] == 1
    assert list(tmp_path.iterdir()) == []  # frames and bank lived in a temporary folder


def test_mode_subset_and_data_option_from_the_command_line(bench, tmp_path, capsys):
    out = tmp_path / "fit.json"
    record = bench.main(
        [
            "--device", "cpu", "--size", "small", "--frame-size", "64x128", "--crop-size", "32x64",
            "--steps", "1", "--warmup", "1", "--rounds", "1", "--workers", "0", "--unique-frames", "2",
            "--memory-batches", "1", "--modes", "a,b", "--data-option", "pin_memory=false",
            "--data-option", "eval_size=[32, 64]", "--no-compile", "--workdir", str(tmp_path), "--json", str(out),
        ]
    )  # fmt: skip
    assert set(record["modes"]) == {"a", "b"} and set(record["ratios"]) == {"b/a"}
    assert record["config"]["data_options"] == {"pin_memory": False, "eval_size": [32, 64]}
    assert record["config"]["compile_losses"] is False and record["compile_note"] is None
    assert json.loads(out.read_text())["modes"]["b"]["batch"] == record["modes"]["b"]["batch"]
    table = capsys.readouterr().out
    assert "| a | batches from memory |" in table and "| b | DataModule, no outliers |" in table


def test_ood_pixels_are_counted_on_the_batches_trained_on(bench):
    timer = bench.StepTimer()
    model = SimpleNamespace(device=torch.device("cpu"))
    label = torch.zeros(2, 4, 4, dtype=torch.int64)
    label[0, :2, :2] = OOD_ID
    batch = {"image": torch.zeros(2, 3, 4, 4), "label": label}
    for _ in range(3):
        timer.on_train_batch_start(None, model, batch, 0)
        timer.on_train_batch_end(None, model, None, batch, 0)
    summary = timer.summary(warmup=1)
    assert summary["ood_pixel_fraction"] == pytest.approx(4 / 32)
    assert summary["timed_steps"] == 2 and summary["batch"]["label"]["shape"] == [2, 4, 4]


def test_step_timer_arithmetic(bench):
    timer = bench.StepTimer()
    timer.starts = [0.0, 1.0, 3.0, 4.5]
    timer.ends = [0.5, 2.0, 4.0, 5.0]
    timer.images = [8, 8, 8, 8]
    summary = timer.summary(warmup=1)
    # timed span: end of the warm-up step (0.5) to the end of step 3 (5.0), three whole cycles;
    # waits 0.5 (0.5->1.0), 1.0 (2.0->3.0) and 0.5 (4.0->4.5); steps 1.0, 1.0, 0.5
    assert summary["elapsed_s"] == pytest.approx(4.5) and summary["timed_steps"] == 3
    assert summary["images_per_s"] == pytest.approx(24 / 4.5)
    assert summary["wait_fraction"] == pytest.approx(2.0 / 4.5)
    assert summary["wait_ms"] == pytest.approx(500.0) and summary["max_wait_ms"] == pytest.approx(1000.0)
    assert summary["step_ms"] == pytest.approx(1000.0)
    for warmup in (0, 4):
        with pytest.raises(RuntimeError, match="warm-up"):
            timer.summary(warmup=warmup)


def test_presets_time_whole_waves_of_worker_batches(bench):
    def config(*argv):
        return bench.config_from_args(bench.build_parser().parse_args(list(argv)))

    full = config("--size", "full", "--device", "cuda")
    assert (full.frame_size, full.crop_size, full.batch_size, full.workers) == ((1024, 2048), (512, 1024), 8, 14)
    assert full.steps % 14 == 0 and full.resolved_precision() == "bf16-mixed" and full.compile_losses
    assert config("--size", "full", "--workers", "5").steps % 5 == 0
    assert config("--size", "full", "--workers", "5", "--steps", "7").steps == 7  # given steps are kept
    small = config("--size", "small", "--device", "cpu", "--modes", "c,a", "--no-compile")
    assert small.modes == ("c", "a") and not small.compile_losses and small.resolved_threads() == 1


def test_bad_options_are_refused_with_their_cause(bench, tmp_path):
    with pytest.raises(ValueError, match="not_an_option.*not a CityscapesOODDataModule argument"):
        bench.datamodule_options({"not_an_option": 1})
    with pytest.raises(ValueError, match="outliers: set by the benchmark"):
        bench.datamodule_options({"outliers": None})
    with pytest.raises(ValueError, match="modes: expected some of"):
        bench.run_benchmark(_tiny(bench, modes=("a", "x")), workdir=tmp_path)
    with pytest.raises(SystemExit):
        bench.main(["--data-option", "no_equals_sign"])
