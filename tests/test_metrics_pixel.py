"""PixelOODMetrics (binned and exact) against scikit-learn on realistic score maps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from synthrel_lightning.metrics import NotComputableError, PixelOODMetrics, pixel_ood_metrics
from synthrel_lightning.metrics.score_bins import HEADER, split_state
from synthrel_lightning.scores import ood_score


def realistic_batch(seed: int, n: int = 4, h: int = 96, w: int = 192, k: int = 19) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits from a random conv net, upsampled like a segmenter's, with ~2% OOD pixels in blobs and void."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, k, 3, padding=1)
    )
    image = F.avg_pool2d(torch.randn(n, 3, h // 4 + 4, w // 4 + 4, generator=g), 5, stride=1)
    with torch.no_grad():
        logits = net(image) * 70.0
    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    blobs = F.interpolate(torch.rand(n, 1, h // 8, w // 8, generator=g), size=(h, w), mode="bilinear")[:, 0]
    ood = blobs > torch.quantile(blobs.flatten(), 0.98)
    # OOD pixels: flatter, lower logits, plus pixel noise so the classes overlap
    logits = torch.where(ood[:, None], logits * 0.5 - 1.0, logits)
    logits = logits + torch.randn(logits.shape, generator=g) * 1.5
    target = ood.long()
    target[:, : h // 10] = 255
    return logits, target


def sklearn_reference(scores: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    valid = target != 255
    y = target[valid].numpy()
    s = scores[valid].double().numpy()
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y, s),
        "ap": average_precision_score(y, s),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95)]),
    }


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [realistic_batch(seed) for seed in range(3)]


TOL = {"auroc": 1e-3, "ap": 5e-3, "fpr95": 5e-3}


@pytest.mark.parametrize("score", ["msp", "energy", "max_logit"])
def test_binned_and_exact_match_sklearn(batches, score: str) -> None:
    scores = [ood_score(score, z) for z, _ in batches]
    targets = [t for _, t in batches]
    all_s, all_t = torch.cat(scores), torch.cat(targets)
    if score == "energy":
        lo, hi = float(all_s.min()), float(all_s.max())
        assert lo < -20 and hi > -3, (lo, hi)  # an unbounded, realistic range
    ref = sklearn_reference(all_s, all_t)
    binned, exact = PixelOODMetrics(fallback_pixels=0), PixelOODMetrics(mode="exact")
    for s, t in zip(scores, targets):
        binned.update(s, t)
        exact.update(s, t)
    rb, re_ = binned.compute(), exact.compute()
    for key in TOL:
        assert abs(float(re_[key]) - ref[key]) < 1e-9, (key, float(re_[key]), ref[key])
        assert abs(float(rb[key]) - ref[key]) <= TOL[key], (key, float(rb[key]), ref[key])
    assert 0.5 < ref["auroc"] < 0.999  # a non-trivial problem
    assert abs(float(rb["best_f1"]) - float(re_["best_f1"])) < 5e-3


def test_ties_and_float16_quantised_scores(batches) -> None:
    # float16 rounding creates many tied scores; SMIYC's own files store float16 maps
    scores = torch.cat([ood_score("energy", z) for z, _ in batches]).half().float()
    target = torch.cat([t for _, t in batches])
    assert scores.unique().numel() < scores.numel() // 10
    ref = sklearn_reference(scores, target)
    exact = pixel_ood_metrics(scores, target)
    m = PixelOODMetrics(fallback_pixels=0)
    m.update(scores, target)
    out = m.compute()
    for key in TOL:
        assert abs(float(exact[key]) - ref[key]) < 1e-9
        assert abs(float(out[key]) - ref[key]) <= TOL[key]


def score_kind(kind: str, n: int = 200_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of one kind (higher = more OOD) and 0/1 targets (5 % OOD) on fixed random inputs."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.05).long()
    z = torch.randn(n, generator=g, dtype=torch.float64) + 2.0 * y
    if kind in ("msp", "-max_softmax", "energy"):
        logits = torch.randn(n, 19, generator=g) * 2.0
        logits[:, 0] += 10.0 - 7.0 * y
        if kind == "energy":
            return -torch.logsumexp(logits, 1), y
        top = logits.softmax(1).amax(1)
        return (1.0 - top if kind == "msp" else -top), y
    scores = {
        "sigmoid(10z)": lambda: torch.sigmoid(10 * z.float()),
        "sigmoid(20z)": lambda: torch.sigmoid(20 * z.float()),
        "sigmoid(20z) float64": lambda: torch.sigmoid(20 * z),
        "1-sigmoid(-20z)": lambda: 1 - torch.sigmoid(-20 * z.float()),
        "1-sigmoid(20z)": lambda: 1 - torch.sigmoid(20 * z.float()),
        "max_logit 10z": lambda: (10 * z).float(),
        "1e6+z float64": lambda: 1e6 + z,
        "1+z/100 float64": lambda: 1 + z / 100,
        "z*1e-12": lambda: (z * 1e-12).float(),
        "z*1e12": lambda: (z * 1e12).float(),
        "bfloat16 sigmoid(5z)": lambda: torch.sigmoid(5 * z).bfloat16(),
    }[kind]
    return scores(), y


def sklearn_all(scores: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """AUROC, AP, FPR95 and best F1 from scikit-learn on float64 scores."""
    y, s = target.numpy(), scores.double().numpy()
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    precision, recall, _ = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    return {
        "auroc": roc_auc_score(y, s),
        "ap": average_precision_score(y, s),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95)]),
        "best_f1": float(f1.max()),
    }


KINDS = [
    "sigmoid(10z)",
    "sigmoid(20z)",
    "sigmoid(20z) float64",
    "1-sigmoid(-20z)",
    "1-sigmoid(20z)",
    "msp",
    "-max_softmax",
    "energy",
    "max_logit 10z",
    "1e6+z float64",
    "1+z/100 float64",
    "z*1e-12",
    "z*1e12",
    "bfloat16 sigmoid(5z)",
]


@pytest.mark.parametrize("kind", KINDS)
def test_binned_within_1e4_of_sklearn_on_every_score_kind(kind: str) -> None:
    scores, target = score_kind(kind)
    ref = sklearn_all(scores, target)
    binned, exact = PixelOODMetrics(fallback_pixels=0), PixelOODMetrics(mode="exact")
    for chunk_s, chunk_t in zip(scores.chunk(4), target.chunk(4)):
        binned.update(chunk_s, chunk_t)
        exact.update(chunk_s, chunk_t)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rb = binned.compute()
    # one resolution per exponent range: the proven bound is within tolerance on every kind
    assert not caught, [str(w.message) for w in caught]
    re_ = exact.compute()
    for key, value in ref.items():
        assert abs(float(re_[key]) - value) < 1e-12, (key, float(re_[key]), value)
        error = abs(float(rb[key]) - value)
        assert error <= 1e-4, (key, float(rb[key]), value)
        assert error <= binned.resolution[key] + 1e-12, (key, error, binned.resolution)
    # the threshold is a real operating point: score >= threshold gives the best F1
    for out in (rb, re_):
        pred = scores.double() >= float(out["best_f1_threshold"])
        tp = int((pred & (target == 1)).sum())
        f1 = 2 * tp / (int(pred.sum()) + int((target == 1).sum()))
        assert abs(f1 - float(out["best_f1"])) < 1e-12


def test_exact_mode_keeps_float64() -> None:
    scores = torch.tensor([0.5, 0.5 + 1e-9, 0.5 + 2e-9, 0.5 + 3e-9], dtype=torch.float64)
    target = torch.tensor([0, 0, 1, 1])
    m = PixelOODMetrics(mode="exact")
    m.update(scores, target)
    out = m.compute()
    assert float(out["auroc"]) == 1.0 and float(out["ap"]) == 1.0
    assert float(out["best_f1_threshold"]) == 0.5 + 2e-9
    assert float(pixel_ood_metrics(scores, target)["auroc"]) == 1.0
    binned = PixelOODMetrics(fallback_pixels=0)
    binned.update(scores, target)
    assert float(binned.compute()["auroc"]) == 1.0


def test_centres_and_signed_zero() -> None:
    # exact 0, -0.0, +-1 and values next to them; -0.0 and 0.0 are one score
    values = [-2.0, -1.0 - 2**-52, -1.0, -1.0 + 2**-53, -0.5, -1e-300, -0.0, 0.0, 1e-300, 0.5, 1 - 2**-53, 1.0]
    values += [1.0 + 2**-52, 2.0, 3.0]
    scores = torch.tensor(values, dtype=torch.float64).repeat_interleave(3)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, scores.shape, generator=g)
    exact = pixel_ood_metrics(scores, target)
    binned = PixelOODMetrics(fallback_pixels=0)
    binned.update(scores, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float64 ties 15 values apart: the bound cannot tell them from spreads
        out = binned.compute()
    for key in ("auroc", "ap", "fpr95", "best_f1"):
        assert float(out[key]) == float(exact[key]), key
    # the binned threshold is its bin's lower edge: the same pixels at or above it
    assert torch.equal(scores >= float(out["best_f1_threshold"]), scores >= float(exact["best_f1_threshold"]))


@pytest.mark.parametrize("kwargs", [{}, {"num_bins": 5000}, {"mode": "exact"}])
def test_best_f1_threshold_reproduces_best_f1(batches, kwargs) -> None:
    scores = torch.cat([ood_score("energy", z) for z, _ in batches])
    target = torch.cat([t for _, t in batches])
    m = PixelOODMetrics(fallback_pixels=0, **kwargs)
    m.update(scores, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 5000 bins lose resolution on purpose
        out = m.compute()
    valid = target != 255
    pred = scores[valid] >= float(out["best_f1_threshold"])
    y = target[valid] == 1
    tp = (pred & y).sum().item()
    f1 = 2 * tp / (pred.sum().item() + y.sum().item())
    assert abs(f1 - float(out["best_f1"])) < 1e-9


def test_lost_resolution_warns_with_a_bound_that_holds() -> None:
    scores, target = score_kind("max_logit 10z", n=100_000)
    ref = sklearn_all(scores, target)
    m = PixelOODMetrics(fallback_pixels=0, num_bins=256)
    m.update(scores, target)
    with pytest.warns(UserWarning, match=r"may differ from an exact sort by up to auroc .* more num_bins"):
        out = m.compute()
    m.update(scores, target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per metric
        m.compute()
    assert max(m.resolution.values()) > 1e-4
    for key, value in ref.items():
        assert abs(float(out[key]) - value) <= m.resolution[key] + 1e-12, key


def test_state_does_not_depend_on_order_split_or_merge() -> None:
    # a data-fitted layout: whatever the order, batching or process split, the same state
    parts = [score_kind(kind, n=20_000, seed=i) for i, kind in enumerate(["energy", "sigmoid(20z)", "z*1e12"])]
    scores = torch.cat([s.double() for s, _ in parts])
    target = torch.cat([t for _, t in parts])
    single = PixelOODMetrics(fallback_pixels=0, num_bins=4096)
    single.update(scores, target)
    perm = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(1))
    streamed = PixelOODMetrics(fallback_pixels=0, num_bins=4096)
    for idx in perm.chunk(7):
        streamed.update(scores[idx], target[idx])
    assert torch.equal(single.hist, streamed.hist)
    # two "processes" with a different share each, merged as a DDP sync / forward would
    a, b = PixelOODMetrics(fallback_pixels=0, num_bins=4096), PixelOODMetrics(fallback_pixels=0, num_bins=4096)
    a.update(scores[perm[:1000]], target[perm[:1000]])
    b.update(scores[perm[1000:]], target[perm[1000:]])
    a.merge_state(b)
    assert torch.equal(a.hist, single.hist)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert {k: float(v) for k, v in a.compute().items()} == {k: float(v) for k, v in single.compute().items()}


def test_streaming_equals_one_batch_and_state_is_flat(batches) -> None:
    streamed, single = PixelOODMetrics(fallback_pixels=0), PixelOODMetrics(fallback_pixels=0)
    sizes = []
    for z, t in batches:
        streamed.update(ood_score("energy", z), t)
        sizes.append(streamed.hist.numel())
    single.update(torch.cat([ood_score("energy", z) for z, _ in batches]), torch.cat([t for _, t in batches]))
    a, b = streamed.compute(), single.compute()
    for key in a:
        assert float(a[key]) == float(b[key])
    assert len(set(sizes)) == 1 and sizes[0] == 2 * streamed.num_bins + HEADER  # 16.5 MB, whatever the data


def test_bad_inputs_raise_clear_errors() -> None:
    m = PixelOODMetrics(fallback_pixels=0)
    scores = torch.rand(2, 8, 8)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="does not match"):
        m.update(scores, target[:, :4])
    bad = scores.clone()
    bad[0, 0, :3] = float("nan")
    bad[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="4 of 128 scores"):
        m.update(bad, target)
    # non-finite scores at ignored pixels are fine
    t_void = target.clone()
    t_void[0, 0, :3] = 255
    t_void[1, 0, 0] = 255
    m.update(bad, t_void)
    t_bad = target.clone()
    t_bad[0, 1, 1] = 2
    t_bad[1, 2, 2] = 254
    with pytest.raises(ValueError, match=r"\[2, 254\]"):
        m.update(scores, t_bad)
    t_bad[0, 1, 1], t_bad[1, 2, 2] = -3, 5000  # outside the one-pass label count
    with pytest.raises(ValueError, match=r"\[-3, 5000\] \(2 pixels\)"):
        m.update(scores, t_bad)
    t_u8 = t_void.to(torch.uint8)
    t_u8[1, 3, 3] = 2
    with pytest.raises(ValueError, match=r"\[2\] \(1 pixels\)"):
        m.update(scores, t_u8)
    m.update(scores, t_void.bool() & False)  # boolean targets are 0 / 1
    with pytest.raises(ValueError, match="floating point"):
        m.update(target, target)
    with pytest.raises(ValueError, match="mode"):
        PixelOODMetrics(mode="fast")
    with pytest.raises(ValueError, match="num_bins"):
        PixelOODMetrics(fallback_pixels=0, num_bins=8)


@pytest.mark.parametrize("mode", ["binned", "exact"])
def test_not_computable_without_both_classes(mode: str) -> None:
    m = PixelOODMetrics(mode=mode)
    assert not m.is_computable()
    m.update(torch.rand(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    assert not m.is_computable()
    with pytest.raises(NotComputableError, match="0 OOD and 16 in-distribution"):
        m.compute()
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    t[0, 0, 0] = 1
    m.update(torch.rand(1, 4, 4), t)
    assert m.is_computable()
    assert 0.0 <= float(m.compute()["auroc"]) <= 1.0


@pytest.mark.parametrize(
    "case", ["energy", "sigmoid(20z)", "1-sigmoid(20z)", "-max_softmax", "subnormal", "narrow", "coarse"]
)
def test_float32_path_counts_like_the_float64_keys(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # float32 scores are binned with 32-bit keys: the state is the one the 64-bit keys give the same
    # scores, and their values are those of the float64 copies (bins no finer than float32 lose nothing)
    num_bins = 64 if case == "coarse" else 1 << 20
    if case == "subnormal":
        scores, target = torch.randn(5000).abs() * 1e-39, (torch.rand(5000) < 0.3).long()
    elif case == "narrow":  # a window finer than float32's spacing
        scores, target = 3 + torch.randint(0, 300, (5000,)).float() * 2**-22, (torch.rand(5000) < 0.3).long()
    else:
        scores, target = score_kind("max_logit 10z" if case == "coarse" else case, n=50_000)
        scores = scores.float()
    target[:100] = 255
    fast, wide, slow = (PixelOODMetrics(fallback_pixels=0, num_bins=num_bins) for _ in range(3))
    used = []
    original = PixelOODMetrics._update_float32
    monkeypatch.setattr(PixelOODMetrics, "_update_float32", lambda m, *a: used.append(original(m, *a)) or used[-1])
    for s, t in zip(scores.chunk(3), target.chunk(3)):
        fast.update(s, t)
        wide.update(s.double(), t)
    monkeypatch.setattr(PixelOODMetrics, "_update_float32", lambda m, *a: False)  # 64-bit keys only
    for s, t in zip(scores.chunk(3), target.chunk(3)):
        slow.update(s, t)
    assert torch.equal(fast.hist, slow.hist)
    # the 32-bit keys did the work, except where they cannot (subnormal distances)
    assert used == [case != "subnormal"] * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = pixel_ood_metrics(scores, target)
        out, out_wide = fast.compute(), wide.compute()
    if case != "coarse":  # 64 bins: both coarse, on different windows
        assert {k: float(v) for k, v in out.items()} == {k: float(v) for k, v in out_wide.items()}
    assert abs(float(out["auroc"]) - float(exact["auroc"])) <= fast.resolution["auroc"] + 1e-12


def test_mixed_precisions_give_one_state_in_any_order() -> None:
    # float32 batches are binned no finer than float32; a later float64 batch refines those bins exactly
    a, ta = score_kind("sigmoid(20z)", n=30_000, seed=1)
    b, tb = score_kind("1e6+z float64", n=30_000, seed=2)
    c, tc = score_kind("bfloat16 sigmoid(5z)", n=30_000, seed=3)
    batches = [(a.float(), ta), (b, tb), (c, tc)]
    states = []
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        metric = PixelOODMetrics(fallback_pixels=0)
        for i in order:
            metric.update(*batches[i])
        states.append(metric.hist)
    assert all(torch.equal(states[0], state) for state in states[1:])
    parts = [PixelOODMetrics(fallback_pixels=0) for _ in batches]
    for part, batch in zip(parts, batches):
        part.update(*batch)
    parts[0].merge_state(parts[1])
    parts[0].merge_state(parts[2])
    assert torch.equal(parts[0].hist, states[0])


def clusters(centres: list[float], n: int = 100_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """z + one of ``centres`` per pixel (z ~ N(0, 1), shifted by 2 for the 5 % OOD pixels), targets."""
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, generator=g) < 0.05).long()
    z = torch.randn(n, generator=g, dtype=torch.float64) + 2.0 * target
    pick = torch.randint(0, len(centres), (n,), generator=g)
    return z + torch.tensor(centres, dtype=torch.float64)[pick], target


@pytest.mark.parametrize("late", [False, True], ids=["mixed", "far-cluster-arrives-late"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spread", [1e2, 1e6, 1e12])
def test_far_apart_clusters_are_exact_in_bins_alone(spread: float, dtype: torch.dtype, late: bool) -> None:
    # z + s * Bernoulli(0.5): two clusters s apart. Each exponent range has its own resolution, so the
    # bins resolve both as finely as one, also when the far cluster only comes after many batches.
    scores, target = clusters([0.0, spread])
    if late:  # every near pixel first, then every far one
        order = torch.argsort((scores > spread / 2).long(), stable=True)
        scores, target = scores[order], target[order]
    scores = scores.to(dtype)
    ref = sklearn_all(scores, target)
    metric = PixelOODMetrics(fallback_pixels=0)
    for chunk_s, chunk_t in zip(scores.chunk(8), target.chunk(8)):
        metric.update(chunk_s, chunk_t)
    with warnings.catch_warnings():
        # the proven bound (worst order of the pixels sharing a bin) may exceed the tolerance: it warns
        warnings.simplefilter("ignore")
        out = metric.compute()
    # one window of bins over both clusters gave AP off by 0.23 (s = 1e6) with a bound of 0.45
    assert max(metric.resolution.values()) < 5e-4, metric.resolution
    for key, value in ref.items():
        error = abs(float(out[key]) - value)
        assert error <= 2e-4 and error <= metric.resolution[key] + 1e-12, (key, float(out[key]), value)


def test_clusters_within_one_exponent_range_switch_to_the_exact_path_and_say_so() -> None:
    # 6e5 + z and 9e5 + z share the exponent range [2**19, 2**20): one window of bins spans both, too
    # coarse for either; the first batches show it, so the metric sorts exactly and says why
    scores, target = clusters([6e5, 9e5])
    ref = sklearn_all(scores, target)
    metric = PixelOODMetrics()
    with pytest.warns(UserWarning, match="switched to the exact path"):
        for chunk_s, chunk_t in zip(scores.chunk(4), target.chunk(4)):
            metric.update(chunk_s, chunk_t)
    out = metric.compute()
    assert metric.exact_fallback is not None and "far-apart" in metric.exact_fallback
    assert metric.resolution == dict.fromkeys(("auroc", "ap", "fpr95", "best_f1"), 0.0)
    for key, value in ref.items():
        assert abs(float(out[key]) - value) <= 1e-12, (key, float(out[key]), value)
    # without the fallback the bins alone say how far off they may be, and the bound holds
    binned_only = PixelOODMetrics(fallback_pixels=0)
    for chunk_s, chunk_t in zip(scores.chunk(4), target.chunk(4)):
        binned_only.update(chunk_s, chunk_t)
    with pytest.warns(UserWarning, match="may differ from an exact sort"):
        binned_values = binned_only.compute()
    for key, value in ref.items():
        assert abs(float(binned_values[key]) - value) <= binned_only.resolution[key] + 1e-12, key


def test_the_fallback_ends_when_the_set_outgrows_it() -> None:
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(4, 5000, generator=g) < 0.05).long()
    scores = torch.randn(4, 5000, generator=g, dtype=torch.float64) + 2.0 * target
    scores += torch.where(torch.rand(4, 5000, generator=g) < 0.5, 6e5, 9e5)  # one exponent range: too coarse
    metric = PixelOODMetrics(fallback_pixels=12_000)
    with pytest.warns(UserWarning, match="switched to the exact path"):
        metric.update(scores[0], target[0])
    metric.update(scores[1], target[1])
    with pytest.warns(UserWarning, match="binned again"):
        metric.update(scores[2], target[2])
    metric.update(scores[3], target[3])
    assert len(metric.scores) == 0 and int(split_state(metric.hist)[0].sum()) == 20_000
    with pytest.warns(UserWarning, match="may differ from an exact sort"):
        metric.compute()


def test_forward_keeps_every_pixel_with_the_fallback_armed() -> None:
    scores, target = score_kind("max_logit 10z", n=40_000)
    streamed, whole = PixelOODMetrics(), PixelOODMetrics()
    for chunk_s, chunk_t in zip(scores.chunk(4), target.chunk(4)):
        streamed(chunk_s, chunk_t)  # forward: a batch value and the accumulated state
    whole.update(scores, target)
    assert {k: float(v) for k, v in streamed.compute().items()} == pytest.approx(
        {k: float(v) for k, v in whole.compute().items()}, abs=1e-4
    )
    assert int(streamed._pos_neg_counts().sum()) == 40_000
