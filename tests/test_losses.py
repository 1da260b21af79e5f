"""Each loss against its formula computed by hand (loops / numpy), on random tensors."""

import numpy as np
import pytest
import torch

from receler.losses import (
    ConceptPreservationLoss,
    MaskLocalizationLoss,
    NegativelyGuidedVelocityLoss,
    T2VUnlearningLoss,
    localization_loss,
    negative_guidance_target,
    preserve_loss,
    unlearn_loss,
)


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    shape = (2, 6, 5)
    return [torch.randn(shape, generator=g) for _ in range(5)]


def test_unlearn_loss_by_hand(tensors):
    o_erased, o_c, o_0, _, _ = tensors
    eta = 7.0
    a, c, z = (t.numpy().astype(np.float64) for t in (o_erased, o_c, o_0))
    total, n = 0.0, 0
    for idx in np.ndindex(a.shape):
        v_neg = z[idx] - eta * (c[idx] - z[idx])
        total += (a[idx] - v_neg) ** 2
        n += 1
    expected = total / n
    assert unlearn_loss(o_erased, negative_guidance_target(o_c, o_0, eta)).item() == pytest.approx(expected, rel=1e-5)
    assert NegativelyGuidedVelocityLoss(eta)(o_erased, o_c, o_0).item() == pytest.approx(expected, rel=1e-5)


def test_negative_target_at_eta_zero_is_unconditional(tensors):
    _, o_c, o_0, _, _ = tensors
    assert torch.equal(negative_guidance_target(o_c, o_0, 0.0), o_0)


def test_preserve_loss_by_hand(tensors):
    a, b = tensors[3], tensors[4]
    expected = float(np.mean((a.numpy().astype(np.float64) - b.numpy().astype(np.float64)) ** 2))
    assert preserve_loss(a, b).item() == pytest.approx(expected, rel=1e-6)
    assert ConceptPreservationLoss()(a, b).item() == pytest.approx(expected, rel=1e-6)


def test_localization_loss_by_hand():
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(3, 6, 4, generator=g) for _ in range(2)]
    masks = [torch.rand(3, 6, generator=g) > 0.5 for _ in range(2)]
    valid = torch.tensor([True, False, True])  # the second prompt's concept tokens were not found
    per_prompt = []
    for b in range(3):
        per_layer = []
        for e, m in zip(layers, masks):
            outside = [float((e[b, n].double() ** 2).mean()) for n in range(6) if not m[b, n]]
            per_layer.append(sum(outside) / max(len(outside), 1))
        per_prompt.append(sum(per_layer) / len(per_layer))
    expected = (per_prompt[0] + per_prompt[2]) / 2
    assert localization_loss(layers, masks, valid).item() == pytest.approx(expected, rel=1e-5)
    assert MaskLocalizationLoss()(layers, masks, valid).item() == pytest.approx(expected, rel=1e-5)
    per_sample = localization_loss(layers, masks, valid, reduction="none")
    assert per_sample.tolist() == pytest.approx([per_prompt[0], 0.0, per_prompt[2]], rel=1e-5)


def test_per_sample_reduction_sums_to_the_mean(tensors):
    o_erased, o_c, o_0, _, _ = tensors
    v_neg = negative_guidance_target(o_c, o_0, 7.0)
    per_sample = unlearn_loss(o_erased, v_neg, reduction="none")
    assert per_sample.shape == (2,)
    assert per_sample.mean().item() == pytest.approx(unlearn_loss(o_erased, v_neg).item(), rel=1e-6)


def test_localization_ignores_eraser_inside_mask():
    e = torch.zeros(1, 4, 3)
    e[0, 1] = 5.0  # large output where the concept is
    mask = torch.tensor([[False, True, False, False]])
    assert localization_loss([e], [mask]).item() == 0.0
    mask_all = torch.ones(1, 4, dtype=torch.bool)  # nothing outside: contributes zero, not NaN
    assert localization_loss([e], [mask_all]).item() == 0.0


def test_total_is_weighted_sum(tensors):
    o_erased, o_c, o_0, o_erased_pre, o_pre = tensors
    layers = [torch.randn(2, 6, 4)]
    masks = [torch.rand(2, 6) > 0.5]
    alpha, beta, eta = 0.7, 2.5, 3.0
    loss, parts = T2VUnlearningLoss(eta, alpha, beta)(o_erased, o_c, o_0, o_erased_pre, o_pre, layers, masks)
    expected = (
        unlearn_loss(o_erased, negative_guidance_target(o_c, o_0, eta))
        + alpha * localization_loss(layers, masks)
        + beta * preserve_loss(o_erased_pre, o_pre)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"loss_unlearn", "loss_preserve", "loss_loc"}
