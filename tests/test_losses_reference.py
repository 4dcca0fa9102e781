"""Each published loss term against an independent transcription of its authors' code.

The reference functions below are written from the public repositories, in plain torch and
numpy, and call nothing from this library:
- Meta-OoD: github.com/robin-chan/meta-ood, ood_training.py (encode_target, cross_entropy)
- Hendrycks OE: github.com/hendrycks/outlier-exposure, the OE fine-tuning scripts
- PEBAL: github.com/tianyu0207/PEBAL, code/losses.py (energy_loss, smooth, sparsity, Gambler)
  and code/engine/trainer.py (how the gambler loss is called)
- RbA: github.com/NazirNayal8/RbA, mask2former/modeling/criterion.py (outlier_loss) and the
  COCO-mix dataset mapper (outlier_mask)
- Mask2Anomaly: github.com/shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation,
  mask2former/modeling/criterion.py (loss_ood, margin) and the semantic dataset mapper (ood_mask)
- MbLS: github.com/by-liu/MbLS, calibrate/losses/logit_margin_l1.py (LogitMarginL1)
- RPL: github.com/yyliu01/RPL, rpl.code/loss/PositiveEnergy.py (energy_part)
Inputs are fixed random tensors with inlier, void (255) and OOD (254) pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms

from synthrel_lightning.losses import (
    CrossEntropy,
    EnergyHinge,
    EnergyHingeEstimatedMargins,
    FocalLoss,
    GamblerLoss,
    LabelSmoothingCE,
    LossTerm,
    MarginLabelSmoothing,
    Mask2AnomalyMarginLoss,
    MaxSoftmaxMargin,
    MetaOoD,
    PositiveEnergy,
    RbALoss,
    SigmoidSumRejection,
    UniformOutlierExposure,
    evaluate_terms,
)

K = 19  # the authors' code hard-codes Cityscapes' 19 classes in places
ATOL = 1e-6


def make_target(batch: int = 3, size: int = 12, ood: bool = True) -> torch.Tensor:
    """Image 0 without OOD pixels, images 1.. with an OOD object; void pixels everywhere."""
    target = torch.randint(0, K, (batch, size, size))
    target[:, 0, :3] = 255
    target[1:, size - 1, size // 2 :] = 255
    if ood:
        target[1, 2:6, 3:8] = 254
        if batch > 2:
            target[2, 7:, :4] = 254
    return target


def make_logits(channels: int = K, batch: int = 3, size: int = 12, scale: float = 3.0) -> torch.Tensor:
    return (torch.randn(batch, channels, size, size, dtype=torch.float64) * scale).requires_grad_(True)


def assert_same_value_and_gradient(ours: torch.Tensor, ref: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    torch.testing.assert_close(ours.detach().reshape(()), ref.detach().reshape(()).to(ours.dtype), rtol=0, atol=ATOL)
    g_ours = torch.autograd.grad(ours, inputs, retain_graph=True)
    g_ref = torch.autograd.grad(ref.sum(), inputs)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-5, atol=ATOL)


# ---------------------------------------------------------------- Meta-OoD
def meta_ood_reference(logits, target, pareto_alpha=0.9, num_classes=K, void_ind=255, ood_ind=254):
    """encode_target + cross_entropy of robin-chan/meta-ood ood_training.py."""
    npy = target.numpy().copy()
    original = npy.copy()
    npy[np.isin(npy, ood_ind)] = num_classes
    npy[np.isin(npy, void_ind)] = num_classes + 1
    enc = np.eye(num_classes + 2)[npy][..., :-2]  # one-hot, the OOD and void columns cut off
    enc[npy == num_classes] = np.full(num_classes, pareto_alpha / num_classes)
    enc[enc == 1] = 1 - pareto_alpha
    enc[np.isin(original, void_ind)] = np.zeros(num_classes)
    soft = torch.from_numpy(enc).permute(0, 3, 1, 2).contiguous()
    return torch.mul(soft.to(logits.dtype), -1.0 * F.log_softmax(logits, 1)).mean()


@pytest.mark.parametrize("lam", [0.9, 0.5])
def test_meta_ood_is_the_pixel_pooled_soft_target_cross_entropy(lam: float) -> None:
    torch.manual_seed(0)
    logits, target = make_logits(), make_target()
    ours = MetaOoD(lam=lam)(logits, target)
    assert_same_value_and_gradient(ours, meta_ood_reference(logits, target, pareto_alpha=lam), [logits])


def test_meta_ood_differs_from_the_per_group_means_it_replaces() -> None:
    torch.manual_seed(1)
    logits, target = make_logits(), make_target()
    per_group = 0.1 * CrossEntropy()(logits, target) + 0.9 * UniformOutlierExposure()(logits, target)
    pooled = MetaOoD(lam=0.9)(logits, target)
    torch.testing.assert_close(pooled, meta_ood_reference(logits, target), rtol=0, atol=ATOL)
    assert abs(pooled.item() - per_group.item()) > 0.1


# ---------------------------------------------------------------- Hendrycks OE
def test_uniform_outlier_exposure_is_hendrycks_oe_term() -> None:
    torch.manual_seed(2)
    logits, target = make_logits(), make_target()
    x = logits.permute(0, 2, 3, 1)[target == 254]  # (N_out, K): the OOD samples
    ref = 0.5 * -(x.mean(1) - torch.logsumexp(x, dim=1)).mean()
    term = UniformOutlierExposure(weight=0.5)
    assert_same_value_and_gradient(term.weight * term(logits, target), ref, [logits])


# ---------------------------------------------------------------- PEBAL
def pebal_energy_reference(logits, targets, num_class=K, m_in=-12, m_out=-6):
    """energy_loss (+ smooth, sparsity) of tianyu0207/PEBAL code/losses.py."""

    def smooth(arr, lamda1):
        shifted_rows = torch.zeros_like(arr)
        shifted_rows[:, :-1, :] = arr[:, 1:, :]
        shifted_rows[:, -1, :] = arr[:, -1, :]
        shifted_cols = torch.zeros_like(arr)
        shifted_cols[:, :, :-1] = arr[:, :, 1:]
        shifted_cols[:, :, -1] = arr[:, :, -1]
        return lamda1 * (torch.sum((shifted_rows - arr) ** 2) + torch.sum((shifted_cols - arr) ** 2)) / 2

    def sparsity(arr, lamda2):
        return lamda2 * torch.mean(torch.norm(arr, dim=0))

    energy = -(1.0 * torch.logsumexp(logits[:, :num_class, :, :] / 1.0, dim=1))
    ec_out = energy[targets == 254]
    ec_in = energy[(targets != 254) & (targets != 255)]
    loss = torch.zeros((), dtype=logits.dtype)
    if ec_out.size()[0] == 0:
        loss = loss + torch.pow(F.relu(ec_in - m_in), 2).mean()
    else:
        loss = loss + 0.5 * (torch.pow(F.relu(ec_in - m_in), 2).mean() + torch.pow(F.relu(m_out - ec_out), 2).mean())
        loss = loss + sparsity(ec_out, 5e-4)
    return loss + smooth(energy, 3e-6)


@pytest.mark.parametrize("with_ood", [True, False])
@pytest.mark.parametrize("offset", [0.0, 9.0])  # 9: energies around -12, both hinges active
def test_energy_hinge_is_pebal_energy_loss(with_ood: bool, offset: float) -> None:
    torch.manual_seed(3)
    logits = make_logits()
    target = make_target(ood=with_ood)
    shifted = logits + offset
    ours = EnergyHinge()(shifted, target)
    assert_same_value_and_gradient(ours, pebal_energy_reference(shifted, target), [logits])


def test_energy_hinge_with_abstention_channel_leaves_it_out_of_the_energy() -> None:
    torch.manual_seed(4)
    logits, target = make_logits(channels=K + 1), make_target()
    ours = EnergyHinge(abstention_channel=True)(logits, target)
    assert_same_value_and_gradient(ours, pebal_energy_reference(logits, target, num_class=K), [logits])
    # The shared-statistics path calls such a term on the full logits.
    values, _ = evaluate_terms([EnergyHinge(abstention_channel=True), PositiveEnergy()], logits, target)
    torch.testing.assert_close(values[0], ours)


def test_estimated_margins_extension_computes_pebal_loss_with_its_margins() -> None:
    torch.manual_seed(5)
    logits, target = make_logits(), make_target()
    term = EnergyHingeEstimatedMargins(in_quantile=0.5, margin_gap=4.0)
    value = term(logits, target)
    m_in, m_out = term.m_in.item(), term.m_out.item()
    assert m_out == pytest.approx(m_in + 4.0)
    torch.testing.assert_close(value, pebal_energy_reference(logits, target, m_in=m_in, m_out=m_out), atol=ATOL, rtol=0)


class PebalGambler:
    """Gambler of tianyu0207/PEBAL code/losses.py (device handling dropped), as trainer.py calls it."""

    def __init__(self, reward=4.5, ood_reg=0.1, num_classes=K):
        self.reward = torch.tensor([reward])
        self.ood_reg = ood_reg
        self.num_classes = num_classes

    def __call__(self, pred, targets, wrong_sample=False):
        pred_prob = torch.softmax(pred, dim=1)
        assert torch.all(pred_prob > 0) and torch.all(pred_prob <= 1)
        true_pred, reservation = pred_prob[:, :-1, :, :], pred_prob[:, -1, :, :]
        reward = torch.logsumexp(pred[:, :-1, :, :], dim=1).pow(2)
        if reward.nelement() > 0:
            reward = transforms.GaussianBlur(7, sigma=1)(reward.unsqueeze(0)).squeeze(0)
        else:
            reward = self.reward
        if wrong_sample:
            reservation = torch.div(reservation, reward)
            mask = targets == 254
            boosted = torch.add(true_pred, reservation.unsqueeze(1))[
                mask.unsqueeze(1).repeat(1, self.num_classes, 1, 1)
            ]
            loss_out = torch.tensor([0.0], dtype=pred.dtype)
            if boosted.nelement() > 0:
                loss_out = self.ood_reg * torch.clamp(boosted, min=1e-7).log()
            void_mask = targets == 255
            targets[void_mask] = 0
            targets[mask] = 0
            loss_in = torch.gather(true_pred, index=targets.unsqueeze(1), dim=1).squeeze()
            loss_in = torch.add(loss_in, reservation)
            loss_in = loss_in[(~mask) & (~void_mask)].log()
            return -(loss_in.mean() + loss_out.mean())
        mask = targets == 255
        targets[mask] = 0
        reservation = torch.div(reservation, reward)
        loss = torch.gather(true_pred, index=targets.unsqueeze(1), dim=1).squeeze()
        loss = torch.add(loss, reservation)
        return -loss[~mask].log().mean()


def pebal_gambler_reference(logits, target, ood_reg=0.1):
    """trainer.py: the loss on the images without outliers plus the loss on those with outliers."""
    gambler = PebalGambler(ood_reg=ood_reg)
    is_ood = (target == 254).flatten(1).any(1)
    loss = gambler(logits[~is_ood], target[~is_ood].clone(), wrong_sample=False)
    if torch.any(is_ood):
        loss = loss + gambler(logits[is_ood], target[is_ood].clone(), wrong_sample=True)
    return loss


@pytest.mark.parametrize("ood_reg", [0.1, 0.5])
def test_gambler_loss_is_pebal_abstention_loss(ood_reg: float) -> None:
    torch.manual_seed(6)
    logits, target = make_logits(channels=K + 1, scale=2.0), make_target()
    ours = GamblerLoss(ood_reg=ood_reg)(logits, target)
    assert_same_value_and_gradient(ours, pebal_gambler_reference(logits, target, ood_reg), [logits])


def test_gambler_loss_without_outlier_images() -> None:
    torch.manual_seed(7)
    logits, target = make_logits(channels=K + 1, scale=2.0), make_target(ood=False)
    ours = GamblerLoss()(logits, target)
    assert_same_value_and_gradient(ours, pebal_gambler_reference(logits, target), [logits])


def test_gambler_loss_rejects_maps_too_small_for_the_reward_blur() -> None:
    logits = torch.randn(1, K + 1, 3, 12)
    with pytest.raises(ValueError, match=r"too small for the 7x7 reward blur"):
        GamblerLoss()(logits, torch.zeros(1, 3, 12, dtype=torch.long))


# ---------------------------------------------------------------- mask classification (RbA, Mask2Anomaly)
def mask_outputs(batch=3, queries=6, size=3, seed=8):
    """Mask2Former-style outputs: class logits (B,Q,K+1) and mask logits (B,Q,h,w)."""
    torch.manual_seed(seed)
    pred_logits = (torch.randn(batch, queries, K + 1, dtype=torch.float64) * 2).requires_grad_(True)
    pred_masks = (torch.randn(batch, queries, size, size, dtype=torch.float64) * 3).requires_grad_(True)
    return pred_logits, pred_masks


def class_scores(pred_logits, pred_masks):
    """l_k = Σ_q softmax(c_q)[k] σ(m_q), the no-object class dropped (what the segmenter hands the terms)."""
    return torch.einsum("bqc,bqhw->bchw", F.softmax(pred_logits, dim=-1)[..., :-1], pred_masks.sigmoid())


def rba_reference(outputs, sem_seg_gt, inlier_upper_threshold=0.0, outlier_lower_threshold=5.0):
    """outlier_loss (nls, tanh, squared_hinge) of NazirNayal8/RbA criterion.py, with the mapper's outlier_mask."""
    outlier_masks = torch.zeros_like(sem_seg_gt)
    outlier_masks[(sem_seg_gt == 254) & (sem_seg_gt != 255)] = 1
    outlier_masks[sem_seg_gt == 255] = 255
    ood_mask = outlier_masks == 1
    id_mask = outlier_masks == 0
    class_logits = F.softmax(outputs["pred_logits"], dim=-1)[..., :-1]
    mask_logits = outputs["pred_masks"].sigmoid()
    logits = torch.einsum("bqc,bqhw->bchw", class_logits, mask_logits)
    score = -logits.tanh().sum(dim=1)
    score = F.interpolate(score.unsqueeze(1), size=outlier_masks.shape[-2:], mode="bilinear", align_corners=True)
    score = score.squeeze(1)
    ood_score, id_score = score[ood_mask], score[id_mask]
    loss = torch.pow(F.relu(id_score - inlier_upper_threshold), 2).mean()
    if ood_mask.sum() > 0:
        loss = loss + torch.pow(F.relu(outlier_lower_threshold - ood_score), 2).mean()
        loss = 0.5 * loss
    return loss


@pytest.mark.parametrize("with_ood", [True, False])
def test_rba_loss_is_rba_outlier_loss(with_ood: bool) -> None:
    pred_logits, pred_masks = mask_outputs()
    target = make_target(ood=with_ood)
    ours = RbALoss()(class_scores(pred_logits, pred_masks), target)
    ref = rba_reference({"pred_logits": pred_logits, "pred_masks": pred_masks}, target)
    assert_same_value_and_gradient(ours, ref, [pred_logits, pred_masks])


def test_rba_loss_with_other_thresholds() -> None:
    pred_logits, pred_masks = mask_outputs(seed=9)
    target = make_target()
    ours = RbALoss(inlier_upper_threshold=-2.0, outlier_lower_threshold=1.0)(
        class_scores(pred_logits, pred_masks), target
    )
    ref = rba_reference({"pred_logits": pred_logits, "pred_masks": pred_masks}, target, -2.0, 1.0)
    assert_same_value_and_gradient(ours, ref, [pred_logits, pred_masks])


def mask2anomaly_reference(outputs, sem_seg_gt, margin=1.0):
    """loss_ood (margin) of Mask2Anomaly criterion.py, with the mapper's ood_mask (B,1,H,W)."""
    ood_masks_ = torch.stack([(g == 254)[None] for g in sem_seg_gt])
    ood_mask = ood_masks_ == 1
    id_mask = ood_masks_ == 0
    class_logits = F.softmax(outputs["pred_logits"], dim=-1)[..., :-1]
    mask_logits = outputs["pred_masks"].sigmoid()
    logits = torch.einsum("bqc,bqhw->bchw", class_logits, mask_logits)
    score = -torch.max(logits, dim=1)[0]
    score = F.interpolate(score.unsqueeze(1), size=ood_masks_.shape[-2:], mode="bilinear", align_corners=True)
    score = score.squeeze(1)
    ood_score = score[ood_mask.squeeze(1)]
    id_score = score[id_mask.squeeze(1)]
    loss = torch.pow(id_score, 2).mean()
    if ood_mask.sum() > 0:
        loss = loss + torch.pow(torch.clamp(margin - ood_score, min=0.0), 2).mean()
    return 0.5 * loss


@pytest.mark.parametrize("with_ood", [True, False])
@pytest.mark.parametrize("margin", [1.0, 0.4])
def test_mask2anomaly_margin_loss_is_their_loss_ood(with_ood: bool, margin: float) -> None:
    pred_logits, pred_masks = mask_outputs(seed=10)
    target = make_target(ood=with_ood)
    ours = Mask2AnomalyMarginLoss(margin=margin)(class_scores(pred_logits, pred_masks), target)
    ref = mask2anomaly_reference({"pred_logits": pred_logits, "pred_masks": pred_masks}, target, margin)
    assert_same_value_and_gradient(ours, ref, [pred_logits, pred_masks])


def test_mask_classification_terms_declare_it_and_need_class_scores() -> None:
    published = [RbALoss(), Mask2AnomalyMarginLoss()]
    per_pixel = [
        CrossEntropy(),
        MetaOoD(),
        UniformOutlierExposure(),
        EnergyHinge(),
        EnergyHingeEstimatedMargins(),
        GamblerLoss(),
        PositiveEnergy(),
        SigmoidSumRejection(),
        MaxSoftmaxMargin(),
        LabelSmoothingCE(),
        FocalLoss(),
        MarginLabelSmoothing(),
    ]
    assert LossTerm.requires_mask_classification is False
    assert all(t.requires_mask_classification for t in published)
    assert not any(t.requires_mask_classification for t in per_pixel)
    assert [t.name for t in published] == ["rba", "mask2anomaly_margin"]

    logits, target = make_logits(), make_target()
    with pytest.raises(ValueError, match=r"\['RbALoss'\] need the per-pixel class scores"):
        evaluate_terms([CrossEntropy(), RbALoss()], logits, target)
    pred_logits, pred_masks = mask_outputs()
    scores = class_scores(pred_logits, pred_masks)
    values, valid = evaluate_terms(
        [CrossEntropy(), RbALoss(), Mask2AnomalyMarginLoss()], logits, target, class_scores=scores
    )
    assert bool(valid)
    torch.testing.assert_close(values[1], RbALoss()(scores, target))
    torch.testing.assert_close(values[2], Mask2AnomalyMarginLoss()(scores, target))


def test_mask_classification_terms_reject_bad_input() -> None:
    scores = torch.rand(2, 4, 3, 3)
    for term in (RbALoss(), Mask2AnomalyMarginLoss()):
        with pytest.raises(ValueError, match=r"class scores must be \(B, K, h, w\)"):
            term(scores[0], torch.zeros(2, 12, 12, dtype=torch.long))
        with pytest.raises(ValueError, match=r"expected \(B, H, W\) with B = 2"):
            term(scores, torch.zeros(3, 12, 12, dtype=torch.long))
        with pytest.raises(TypeError, match="integer"):
            term(scores, torch.zeros(2, 12, 12))
        with pytest.raises(ValueError, match=r"values \[7\] outside 0..3"):
            term(scores, torch.full((2, 12, 12), 7))
    with pytest.raises(ValueError, match="score_norm"):
        RbALoss(score_norm="softmax")


# ---------------------------------------------------------------- MbLS
def mbls_reference(inputs, targets, margin=10.0, alpha=0.1, ignore_index=255):
    """LogitMarginL1.forward of by-liu/MbLS (the loss, without alpha scheduling)."""
    inputs = inputs.view(inputs.size(0), inputs.size(1), -1).transpose(1, 2)
    inputs = inputs.contiguous().view(-1, inputs.size(2))
    targets = targets.view(-1)
    index = torch.nonzero(targets != ignore_index).squeeze()
    inputs, targets = inputs[index, :], targets[index]
    loss_ce = F.cross_entropy(inputs, targets)
    max_values = inputs.max(dim=1).values.unsqueeze(dim=1).repeat(1, inputs.shape[1])
    loss_margin = F.relu(max_values - inputs - margin).mean()
    return loss_ce + alpha * loss_margin


@pytest.mark.parametrize("margin,alpha", [(10.0, 0.1), (2.0, 0.3)])
def test_margin_label_smoothing_default_is_mbls_logit_margin_l1(margin: float, alpha: float) -> None:
    torch.manual_seed(11)
    logits, target = make_logits(scale=6.0), make_target()
    ours = MarginLabelSmoothing(margin=margin, alpha=alpha)(logits, target)
    # OOD pixels are not in MbLS's setting; this library ignores them like void.
    ref = mbls_reference(logits, target.masked_fill(target == 254, 255), margin, alpha)
    assert_same_value_and_gradient(ours, ref, [logits])


# ---------------------------------------------------------------- RPL
def rpl_energy_part_reference(logits, targets, out_idx=254):
    """energy_part of yyliu01/RPL rpl.code/loss/PositiveEnergy.py energy_loss."""
    out_msk = targets == out_idx
    if torch.sum(out_msk) > 0:
        flat = logits.flatten(start_dim=2).permute(0, 2, 1)
        return F.relu(torch.log(torch.sum(torch.exp(flat), dim=2))[out_msk.flatten(start_dim=1)]).mean()
    return torch.tensor([0.0], dtype=logits.dtype)


@pytest.mark.parametrize("with_ood", [True, False])
def test_positive_energy_is_rpl_energy_part(with_ood: bool) -> None:
    torch.manual_seed(12)
    logits = make_logits(scale=2.0)
    logits_shifted = logits - 3.5  # energies on both sides of 0
    target = make_target(ood=with_ood)
    ours = PositiveEnergy()(logits_shifted, target)
    ref = rpl_energy_part_reference(logits_shifted, target)
    if with_ood:
        assert_same_value_and_gradient(ours, ref, [logits])
    else:
        assert ours.item() == ref.item() == 0.0
