"""Clustered and local temperature scaling against transcriptions of relis (github.com/naver/relis).

The transcriptions below follow relis' compute_clusters_temp_scaling.py, clustering_helpers.py,
extract_features.py, uncertainty_helpers.py (find_best_temperature_grid_search, _ECELoss),
eval_calibration_clustering.py (soft assignment), lts_network.py and train_lts_network.py; they
call none of this package's code.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans
from torch import nn

from synthrel_lightning.calibration import fit_temperature
from synthrel_lightning.calibration.clustered import ClusteredTemperature, fit_clustered_temperature
from synthrel_lightning.calibration.features import relis_features
from synthrel_lightning.calibration.local import LocalTemperatureNetwork, fit_local_temperature, split_images

K = 4
GRID = (0.5, 5.0, 0.05)


# ----------------------------------------------------------------------------- transcriptions of relis
def relis_ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    logits = logits.double()
    confidences, predictions = torch.max(F.softmax(logits, dim=1), 1)
    accuracies = predictions.eq(labels)
    bounds = torch.linspace(0, 1, n_bins + 1)
    ece = torch.zeros(1)
    for lower, upper in zip(bounds[:-1], bounds[1:]):
        in_bin = confidences.gt(lower.item()) * confidences.le(upper.item())
        prop = in_bin.float().mean()
        if prop.item() > 0:
            ece += torch.abs(confidences[in_bin].mean() - accuracies[in_bin].float().mean()) * prop
    return float(ece)


def relis_best_temperature(logits: torch.Tensor, labels: torch.Tensor, min_t: float, max_t: float, step: float):
    logits = logits[labels != 255, :].double()
    labels = labels[labels != 255].long()
    best_ece = relis_ece(logits, labels)
    best_temp = 1.0
    for t in np.arange(min_t, max_t, step):
        ece = relis_ece(logits / t, labels)
        if ece < best_ece:
            best_ece, best_temp = ece, t
    return best_temp


def relis_feature(feature_map: torch.Tensor) -> torch.Tensor:
    features = feature_map[0].sum(dim=-1).sum(dim=-1)
    return features / features.max()


class RelisTemperatureModel(nn.Module):
    """relis' lts_network.TemperatureModel, on the CPU."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()

        def conv(c: int) -> nn.Conv2d:
            return nn.Conv2d(c, 1, kernel_size=5, stride=1, padding=4, padding_mode="reflect", dilation=2, bias=True)

        self.temperature_level_2_conv1 = conv(num_classes)
        self.temperature_level_2_conv2 = conv(num_classes)
        self.temperature_level_2_conv3 = conv(num_classes)
        self.temperature_level_2_conv4 = conv(num_classes)
        self.temperature_level_2_param1 = conv(num_classes)
        self.temperature_level_2_param2 = conv(num_classes)
        self.temperature_level_2_param3 = conv(num_classes)
        self.temperature_level_2_conv_img = conv(3)
        self.temperature_level_2_param_img = conv(num_classes)
        self.num_classes = num_classes

    def weights_init(self) -> None:
        for p in self.parameters():
            torch.nn.init.zeros_(p.data)

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        temperature_1 = self.temperature_level_2_conv1(logits)
        temperature_1 += torch.ones(1)
        temperature_2 = self.temperature_level_2_conv2(logits)
        temperature_2 += torch.ones(1)
        temperature_3 = self.temperature_level_2_conv3(logits)
        temperature_3 += torch.ones(1)
        temperature_4 = self.temperature_level_2_conv4(logits)
        temperature_4 += torch.ones(1)
        temperature_param_1 = self.temperature_level_2_param1(logits)
        temperature_param_2 = self.temperature_level_2_param2(logits)
        temperature_param_3 = self.temperature_level_2_param3(logits)
        temp_level_11 = temperature_1 * torch.sigmoid(temperature_param_1) + temperature_2 * (
            1.0 - torch.sigmoid(temperature_param_1)
        )
        temp_level_12 = temperature_3 * torch.sigmoid(temperature_param_2) + temperature_4 * (
            1.0 - torch.sigmoid(temperature_param_2)
        )
        temp_1 = temp_level_11 * torch.sigmoid(temperature_param_3) + temp_level_12 * (
            1.0 - torch.sigmoid(temperature_param_3)
        )
        temp_2 = self.temperature_level_2_conv_img(image) + torch.ones(1)
        temp_param = self.temperature_level_2_param_img(logits)
        temperature = temp_1 * torch.sigmoid(temp_param) + temp_2 * (1.0 - torch.sigmoid(temp_param))
        temperature = F.relu(temperature + torch.ones(1)) + 1e-8
        temperature = temperature.repeat(1, self.num_classes, 1, 1)
        return logits / temperature


def relis_train_lts(train, val, epochs: int, lr: float, batch_size: int, num_classes: int) -> nn.Module:
    """train_lts_network.SolverOps.optimize_temperature on lists of (logits, labels, image), training order fixed."""
    nll_criterion = nn.CrossEntropyLoss(ignore_index=255)
    num_images = len(train)
    temp_model = RelisTemperatureModel(num_classes)
    temp_model.weights_init()
    temp_model.train()
    optimizer = torch.optim.Adam(temp_model.parameters(), lr=lr)
    optimizer.zero_grad()
    best_model = copy.deepcopy(temp_model)
    mean_val_loss = 1e6
    idle_iteration_counter = 0
    for _epoch in range(epochs):
        for i_iter, (logits, labels, image) in enumerate(train):
            scaled_logits = temp_model(logits, image)
            loss = nll_criterion(scaled_logits, labels)
            loss.backward()
            if ((i_iter + 1) % batch_size == 0) or (i_iter + 1 == num_images):
                optimizer.step()
                optimizer.zero_grad()
            if (i_iter + 1) % (10 * batch_size) == 0 or (i_iter + 1 == num_images):
                temp_model.eval()
                with torch.no_grad():
                    tmp_loss = 0
                    for v_logits, v_labels, v_image in val:
                        tmp_loss += nll_criterion(temp_model(v_logits, v_image), v_labels).item()
                    mean_tmp_loss = tmp_loss / len(val)
                    if mean_tmp_loss < mean_val_loss:
                        mean_val_loss = mean_tmp_loss
                        best_model = copy.deepcopy(temp_model)
                        idle_iteration_counter = 0
                    else:
                        idle_iteration_counter += 1
                        images_per_iter = 10 * batch_size if num_images > 10 * batch_size else num_images
                        if idle_iteration_counter > 3 * num_images / images_per_iter:
                            return best_model
                temp_model.train()
    return best_model


# ----------------------------------------------------------------------------- inputs
def cluster_frames(seed: int = 0, per_group: int = 5, pixels: int = 400):
    """Three groups of frames with distinct features and distinct over-confidence (calibrating T 1.5, 2.2, 3.1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for group, scale in enumerate([1.5, 2.2, 3.1]):
        centre = torch.zeros(6)
        centre[group * 2] = 1.0
        for _ in range(per_group):
            true = torch.randn(pixels, K, generator=g) * 2.0
            labels = torch.multinomial(torch.softmax(true, 1), 1, generator=g).squeeze(1)
            feature = (centre + 0.05 * torch.randn(6, generator=g)).double().unsqueeze(0)
            out.append((feature, true * scale, labels))
    return out


# ----------------------------------------------------------------------------- tests
def test_features_are_relis_spatial_sums_over_their_maximum() -> None:
    maps = torch.rand(3, 7, 5, 6, generator=torch.Generator().manual_seed(1))
    ours = relis_features(maps)
    for b in range(3):
        assert torch.allclose(ours[b], relis_feature(maps[b : b + 1]).double(), rtol=1e-6)


def test_clustered_temperatures_equal_relis_compute_clusters_temp_scaling() -> None:
    frames = cluster_frames()
    fit = fit_clustered_temperature(frames, n_clusters=3, seed=111, grid=GRID, pixels_per_image="all")
    features = torch.cat([f[0] for f in frames]).float()  # relis stacks features in a float32 tensor
    km = MiniBatchKMeans(n_clusters=3, batch_size=2048, n_init=5, random_state=111)
    labels = km.fit(features).predict(features)
    assert np.allclose(fit.calibrator.centres.numpy(), km.cluster_centers_, atol=1e-6)
    assert list(fit.calibrator.clusters(features.double()).numpy()) == list(labels)
    for c in range(3):
        members = [frames[i] for i in np.flatnonzero(labels == c)]
        z = torch.cat([m[1] for m in members])
        y = torch.cat([m[2] for m in members])
        expected = relis_best_temperature(z, y, *GRID)
        assert float(fit.calibrator.temperatures[c]) == pytest.approx(expected, abs=1e-9)
    assert sorted(fit.sizes) == [5, 5, 5] and len(set(fit.calibrator.temperatures.tolist())) == 3
    assert fit.ece_after < fit.ece_before
    # Test images go to the nearest centre (KMeans.predict), or relis' soft weights.
    test = torch.rand(20, 6, generator=torch.Generator().manual_seed(9))
    assert list(fit.calibrator.clusters(test.double()).numpy()) == list(km.predict(test))
    soft = ClusteredTemperature(fit.calibrator.centres, fit.calibrator.temperatures, "soft")
    distances = km.transform(test.numpy()) + 1e-6
    weights = 1 / distances
    probs = weights / weights.sum(axis=1, keepdims=True)
    expected_soft = (probs * fit.calibrator.temperatures.numpy()).sum(axis=1)
    assert np.allclose(soft.image_temperatures(test.double()).numpy(), expected_soft, rtol=1e-5)


def test_one_cluster_is_vanilla_temperature_scaling() -> None:
    frames = cluster_frames(seed=2)
    fit = fit_clustered_temperature(frames, n_clusters=1, grid=GRID, pixels_per_image=300, pixel_seed=4)
    vanilla = fit_temperature(
        [(f[1], f[2]) for f in frames], method="ece_grid", grid=GRID, pixels_per_image=300, seed=4
    )
    assert float(fit.calibrator.temperatures[0]) == vanilla.temperature
    assert fit.ece_after == pytest.approx(vanilla.ece_after, rel=1e-6)


def test_more_clusters_than_images_is_an_error() -> None:
    frames = cluster_frames(per_group=1)
    with pytest.raises(ValueError, match="n_clusters=4 is more than the 3 images"):
        fit_clustered_temperature(frames, n_clusters=4, grid=GRID)


def test_lts_network_equals_relis_temperature_model() -> None:
    torch.manual_seed(0)
    reference = RelisTemperatureModel(K)
    for p in reference.parameters():
        nn.init.normal_(p, std=0.2)
    ours = LocalTemperatureNetwork(K)
    ours.load_state_dict(reference.state_dict())  # relis' parameter names load as they are
    logits, image = torch.randn(2, K, 12, 10) * 3, torch.rand(2, 3, 12, 10)
    assert torch.allclose(ours(logits, image), reference(logits, image), rtol=1e-6, atol=1e-6)
    fresh = LocalTemperatureNetwork(K)
    assert torch.allclose(fresh.temperature(logits, image), torch.full((2, 1, 12, 10), 2.0))  # zero init: T = 2


def test_lts_training_equals_relis_train_lts_network() -> None:
    g = torch.Generator().manual_seed(3)
    frames = []
    for _ in range(7):
        true = torch.randn(1, K, 8, 8, generator=g) * 2
        labels = torch.multinomial(torch.softmax(true, 1).permute(0, 2, 3, 1).reshape(-1, K), 1, generator=g)
        labels = labels.reshape(1, 8, 8)
        labels[:, 0, :3] = 255
        frames.append((true * 2.5, labels, torch.rand(1, 3, 8, 8, generator=g)))
    fit = fit_local_temperature(frames, len(frames), K, epochs=6, lr=1e-2, batch_size=2, seed=5)
    train, val = split_images(len(frames), 0.2, 500, 5)
    assert len(val) == 1 and len(train) == 6 and fit.train_images == 6
    reference = relis_train_lts([frames[i] for i in train], [frames[i] for i in val], 6, 1e-2, 2, K)
    for name, value in reference.state_dict().items():
        assert torch.allclose(fit.network.state_dict()[name], value, atol=1e-6), name
    assert any(bool(v.abs().sum() > 0) for v in fit.network.state_dict().values())  # it trained


def test_calibrate_clustered_and_lts_checkpoints_carry_what_applies_them(tmp_path: Path) -> None:
    import lightning as L

    from synthrel_lightning.calibration import calibrate
    from synthrel_lightning.calibration.checkpoint import load_calibrator
    from tests.test_calibration_callback import K as CK
    from tests.test_calibration_callback import TinyContractModule, TinyData

    model = TinyContractModule()
    ckpt = tmp_path / "m.ckpt"
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(ckpt)
    data = TinyData(num_val=8)
    report = calibrate(
        TinyContractModule(), data, ckpt, set_name="clean", method="clustered", n_clusters=2,
        feature_module="conv", grid=GRID, progress=False, output=tmp_path / "c.ckpt",
    )  # fmt: skip
    assert report.fit is None and "clusters: 2" in report.summary()
    saved = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert saved["calibration"]["kind"] == "clustered" and saved["calibration"]["centres"].shape == (2, CK)
    calibrator = load_calibrator(tmp_path / "c.ckpt")
    images = data.val_dataloader()[0].dataset.images[:3]
    fresh = TinyContractModule()
    raw = fresh.raw_logits(images)
    feats = relis_feature(raw[:1])
    nearest = int(torch.cdist(feats[None].double(), saved["calibration"]["centres"]).argmin())
    t0 = float(saved["calibration"]["temperatures"][nearest])
    assert torch.allclose(calibrator(fresh, images)[:1], raw[:1] / t0, rtol=1e-5)
    with pytest.raises(ValueError, match="more than the 8 images"):
        calibrate(TinyContractModule(), data, ckpt, set_name="clean", method="clustered", n_clusters=9,
                  feature_module="conv", progress=False, output=tmp_path / "x.ckpt")  # fmt: skip
    report = calibrate(
        TinyContractModule(), data, ckpt, set_name="clean", method="lts", lts_epochs=2, progress=False,
        output=tmp_path / "l.ckpt",
    )  # fmt: skip
    assert "validation NLL" in report.summary()
    saved = torch.load(tmp_path / "l.ckpt", weights_only=True)
    assert saved["calibration"]["kind"] == "lts"
    lts = load_calibrator(tmp_path / "l.ckpt")
    net = LocalTemperatureNetwork(CK)
    net.load_state_dict(saved["calibration"]["network"])
    assert torch.allclose(lts(fresh, images), net(raw, images), rtol=1e-6)


def test_the_callback_fits_clustered_and_local_calibrators(tmp_path: Path) -> None:
    from synthrel_lightning.callbacks import TemperatureScaling
    from tests.test_calibration_callback import TinyContractModule, TinyData, make_trainer

    with pytest.raises(ValueError, match="valid methods: nll, ece_grid, clustered, lts"):
        TemperatureScaling(method="cluster")  # type: ignore[arg-type]
    callback = TemperatureScaling(
        set_name="clean", method="clustered", grid=GRID, spatial_options={"n_clusters": 2, "feature_module": "conv"}
    )
    model = TinyContractModule()
    make_trainer(tmp_path, [callback]).fit(model, datamodule=TinyData(num_val=8))
    assert callback.calibrator is not None and callback.calibrator.method == "clustered"
    assert callback.calibration_state["centres"].shape[0] == 2 and float(model.temperature) == 1.0
    images = TinyData().val_dataloader()[0].dataset.images[:2]
    scaled = callback.calibrator(model, images)
    assert scaled.shape == (2, 5, 16, 16) and not torch.allclose(scaled, model.raw_logits(images))
    restored = TemperatureScaling(method="clustered")
    restored.load_state_dict(callback.state_dict())
    assert torch.allclose(restored.calibrator(model, images), scaled)
    lts = TemperatureScaling(set_name="clean", method="lts", spatial_options={"lts_epochs": 1})
    make_trainer(tmp_path / "l", [lts]).fit(TinyContractModule(), datamodule=TinyData(num_val=6))
    assert lts.calibrator is not None and lts.calibrator.method == "lts"
