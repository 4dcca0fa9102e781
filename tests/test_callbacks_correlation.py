"""MetricCorrelation on real Trainer runs: logged coefficients vs scipy, errors, checkpoint and file histories."""

from __future__ import annotations

import json
import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from scipy import stats
from torch.utils.data import DataLoader, TensorDataset

from synthrel_lightning.callbacks import MetricCorrelation
from synthrel_lightning.correlation.histories import pool_histories

SYN = [0.31, 0.45, 0.40, 0.62, 0.58, 0.70]
REAL = [0.20, 0.41, 0.30, 0.55, 0.61, 0.66]


class _Logs(L.LightningModule):
    """Tiny module whose validation logs a known metric per epoch."""

    def __init__(self, syn: list[float], real: list[float]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.syn, self.real = syn, real

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        e = self.current_epoch
        self.log("val/synthetic_fog/miou", self.syn[e])
        self.log("val/acdc_fog/miou", self.real[e])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)


def _trainer(tmp_path, epochs: int, callbacks, logger=False) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )


PAIRS = [{"synthetic": "synthetic_fog", "real": "acdc_fog", "metric": "miou"}]


def test_logs_correlations_matching_scipy_to_tensorboard_and_file(tmp_path, caplog) -> None:
    history = tmp_path / "hist" / "run_a.json"
    cb = MetricCorrelation(PAIRS, history_path=str(history), bootstrap=200, run_id="a")
    tb = TensorBoardLogger(tmp_path, name="tb")
    with caplog.at_level(logging.INFO, logger="synthrel_lightning.callbacks.correlation"):
        _trainer(tmp_path, 4, [cb], logger=tb).fit(_Logs(SYN, REAL), _loader(), _loader())
    assert sum("correlations are logged from 3 on" in r.message for r in caplog.records) == 1
    key = "synthetic_fog~acdc_fog/miou"
    corr = cb.last_correlations[key]
    x, y = SYN[:4], REAL[:4]
    assert corr["pearson"].coefficient == pytest.approx(stats.pearsonr(x, y)[0])
    assert corr["spearman"].coefficient == pytest.approx(stats.spearmanr(x, y)[0])
    assert corr["kendall"].coefficient == pytest.approx(stats.kendalltau(x, y)[0])
    # Four points: exact p-values, an interval that is not a point, and the small-n warning.
    assert corr["spearman"].p_value == pytest.approx(2 / 24) and corr["spearman"].interval == "copula"
    assert corr["spearman"].ci_high - corr["spearman"].ci_low > 0.5 and corr["spearman"].warning.startswith("only 4")
    saved = json.loads(history.read_text())
    # Logged values pass through float32 tensors.
    assert [r["epoch"] for r in saved["records"]] == [0, 1, 2, 3]
    assert [r["x"] for r in saved["records"]] == pytest.approx(x) and [
        r["y"] for r in saved["records"]
    ] == pytest.approx(y)
    # TensorBoard received the scalars and the scatter figure.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert f"corr/{key}/pearson" in scalars and f"corr/{key}/pearson_ci_low" in scalars
    # Logged only from the third validation on: epochs 2 and 3.
    assert len(acc.Scalars(f"corr/{key}/pearson")) == 2
    assert acc.Scalars(f"corr/{key}/kendall")[-1].value == pytest.approx(stats.kendalltau(x, y)[0], abs=1e-6)
    assert f"corr/{key}/scatter" in acc.Tags()["images"]


def test_history_survives_checkpoint_resume_and_pools_across_runs(tmp_path) -> None:
    cb = MetricCorrelation(PAIRS, history_path=str(tmp_path / "a.json"), bootstrap=50, log_plot=False, run_id="a")
    trainer = _trainer(tmp_path, 3, [cb])
    model = _Logs(SYN, REAL)
    trainer.fit(model, _loader(), _loader())
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = MetricCorrelation(PAIRS, history_path=str(tmp_path / "a.json"), bootstrap=50, log_plot=False)
    trainer2 = _trainer(tmp_path, 6, [resumed])
    trainer2.fit(_Logs(SYN, REAL), _loader(), _loader(), ckpt_path=str(ckpt))
    assert [r["epoch"] for r in resumed.records] == list(range(6)) and resumed.run_id == "a"
    assert float(trainer2.callback_metrics["corr/synthetic_fog~acdc_fog/miou/pearson"]) == pytest.approx(
        stats.pearsonr(SYN, REAL)[0], abs=1e-6
    )
    # A second run writes its own file; pooling gives all points.
    other = MetricCorrelation(PAIRS, history_path=str(tmp_path / "b.json"), bootstrap=50, log_plot=False, run_id="b")
    _trainer(tmp_path, 2, [other]).fit(_Logs(REAL, SYN), _loader(), _loader())
    pooled = pool_histories([tmp_path / "a.json", tmp_path / "b.json"])
    assert len(pooled) == 8 and {r["run"] for r in pooled} == {"a", "b"}


def test_missing_set_names_the_available_keys(tmp_path) -> None:
    cb = MetricCorrelation([{"synthetic": "synthetic_fog", "real": "acdc_night", "metrics": ["miou"]}], bootstrap=10)
    with pytest.raises(
        KeyError,
        match=r"no \['val/acdc_night/miou'\].*Available val metrics: \['val/acdc_fog/miou', 'val/synthetic_fog/miou'\]",
    ):
        _trainer(tmp_path, 1, [cb]).fit(_Logs(SYN, REAL), _loader(), _loader())


def test_plot_falls_back_to_png_in_log_dir(tmp_path) -> None:
    cb = MetricCorrelation(PAIRS, bootstrap=20)
    logger = CSVLogger(tmp_path, name="csv")
    _trainer(tmp_path, 3, [cb], logger=logger).fit(_Logs(SYN, REAL), _loader(), _loader())
    pngs = sorted((tmp_path / "csv").rglob("*.png"))
    assert len(pngs) == 1 and pngs[0].name.startswith("corr_synthetic_fog-acdc_fog_miou_scatter")
    assert pngs[0].with_suffix(".svg").is_file() and pngs[0].with_suffix(".pdf").is_file()
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "corr/synthetic_fog~acdc_fog/miou/spearman" in rows


def test_bad_pairs_rejected() -> None:
    with pytest.raises(ValueError, match="must have keys synthetic, real and metric"):
        MetricCorrelation([{"synthetic": "a", "metric": "miou"}])
    with pytest.raises(ValueError, match="pairs is empty"):
        MetricCorrelation([])
