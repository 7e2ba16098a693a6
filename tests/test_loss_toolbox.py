"""Loss toolbox (``eat_plugin.losses``: focal, class weights, weighted CE, uncertainty weighting) and the
sanity checks of ``eat_plugin.diagnostics``, against closed forms, hand-computed cases, reference formulas
written out here, ``torch.autograd.gradcheck`` and analytic derivatives."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eat_plugin.diagnostics import chance_loss, check_initial_loss, parameters_without_grad
from eat_plugin.losses import (
    UncertaintyWeighting,
    binary_cross_entropy,
    binary_focal_loss,
    class_weights_from_counts,
    cross_entropy,
    focal_loss,
)

LN3 = math.log(3.0)
P_QUARTERS = torch.tensor([[0.0, LN3]])  # (1, 2) logits with softmax [1/4, 3/4]


def reference_focal(logits, target, gamma, alpha, eps):
    """``Σ_c q_c α_c (1 - p_c)^γ (-log p_c)`` with ``q = (1 - ε) onehot + ε / C``, from exp / sum in float64."""
    z = logits.double()
    p = torch.exp(z - z.max(-1, keepdim=True).values)
    p = p / p.sum(-1, keepdim=True)  # (B, C)
    c = z.size(-1)
    q = (1 - eps) * F.one_hot(target, c).double() + eps / c  # (B, C)
    a = torch.as_tensor(1.0 if alpha is None else alpha, dtype=torch.float64)  # (C,) or () broadcast
    return (q * a * (1 - p) ** gamma * -torch.log(p)).sum(-1)  # (B,)


# ------------------------------------------------------------------------------------------ focal


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_focal_with_gamma_0_is_cross_entropy_exactly(eps):
    torch.manual_seed(0)
    logits, target = torch.randn(16, 7) * 3, torch.randint(0, 7, (16,))
    ce = cross_entropy(logits, target, eps)  # (B,)
    assert torch.equal(focal_loss(logits, target, gamma=0.0, label_smoothing=eps), ce)
    assert torch.equal(ce, F.cross_entropy(logits, target, label_smoothing=eps, reduction="none"))
    alpha = torch.rand(7) + 0.5  # per-class alpha at gamma 0 is the class-weighted cross-entropy
    weighted = F.cross_entropy(logits, target, weight=alpha, label_smoothing=eps, reduction="none")
    torch.testing.assert_close(focal_loss(logits, target, 0.0, alpha, eps), weighted, rtol=1e-6, atol=1e-7)
    assert focal_loss(logits, target, 0.0, alpha, eps, "sum").item() == pytest.approx(
        F.cross_entropy(logits, target, weight=alpha, label_smoothing=eps, reduction="sum").item(), rel=1e-6
    )


def test_focal_by_hand_two_classes():
    logits = P_QUARTERS.repeat(2, 1)  # p = [1/4, 3/4] for both rows
    target = torch.tensor([1, 0])  # p_t = 3/4 (easy), 1/4 (hard)
    easy, hard = (1 / 4) ** 2 * math.log(4 / 3), (3 / 4) ** 2 * math.log(4)
    torch.testing.assert_close(focal_loss(logits, target, gamma=2.0), torch.tensor([easy, hard]))
    torch.testing.assert_close(focal_loss(logits, target, 2.0, alpha=0.5), torch.tensor([easy, hard]) / 2)
    alpha = torch.tensor([0.25, 0.75])  # alpha_t: class 1 -> 0.75, class 0 -> 0.25
    torch.testing.assert_close(focal_loss(logits, target, 2.0, alpha), torch.tensor([0.75 * easy, 0.25 * hard]))
    # gamma 1, smoothing 0.2 on the hard row: 0.9 * (3/4) ln 4 + 0.1 * (1/4) ln(4/3)
    by_hand = 0.9 * 0.75 * math.log(4) + 0.1 * 0.25 * math.log(4 / 3)
    assert focal_loss(logits[1:], target[1:], 1.0, label_smoothing=0.2).item() == pytest.approx(by_hand, rel=1e-6)
    assert focal_loss(logits, target, 2.0, reduction="mean").item() == pytest.approx((easy + hard) / 2, rel=1e-6)
    assert focal_loss(logits, target, 2.0, reduction="sum").item() == pytest.approx(easy + hard, rel=1e-6)


@pytest.mark.parametrize("gamma, alpha, eps", [(2.0, None, 0.0), (0.5, [0.2, 1.0, 3.0, 0.7], 0.1), (3.0, 0.25, 0.3)])
def test_focal_matches_the_written_out_formula(gamma, alpha, eps):
    torch.manual_seed(1)
    logits, target = torch.randn(32, 4, dtype=torch.float64) * 2, torch.randint(0, 4, (32,))
    alpha_arg = torch.tensor(alpha, dtype=torch.float64) if isinstance(alpha, list) else alpha
    expected = reference_focal(logits, target, gamma, alpha, eps)  # a float alpha broadcasts over the classes
    torch.testing.assert_close(focal_loss(logits, target, gamma, alpha_arg, eps), expected)


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_focal_gradcheck(gamma):
    torch.manual_seed(2)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    target, alpha = torch.tensor([0, 2, 1, 1, 0]), torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, target, gamma, alpha, 0.1), (logits,))
    sig_logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    soft = torch.rand(4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: binary_focal_loss(x, soft, gamma, 0.25), (sig_logits,))


def test_cross_entropy_gradient_is_p_minus_onehot():
    """The analytic derivative that focal loss reduces to at gamma 0: d CE / d x = softmax(x) - onehot(y)."""
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (6,))
    (grad,) = torch.autograd.grad(focal_loss(logits, target, 0.0, reduction="sum"), logits)
    torch.testing.assert_close(grad, torch.softmax(logits.detach(), -1) - F.one_hot(target, 4).double())


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_large_logits_are_finite(gamma):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [1e4, 1e4, -1e4]], requires_grad=True)
    target = torch.tensor([0, 0, 2])  # confident right, confident wrong, confident wrong
    loss = focal_loss(logits, target, gamma, torch.tensor([1.0, 2.0, 0.5]), 0.1)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    plain = focal_loss(logits, target, gamma)  # no smoothing: exact values
    assert plain[0].item() == 0.0 and plain[1].item() == pytest.approx(2e4) and plain[2].item() == pytest.approx(
        2e4 + math.log(2)
    )
    x = torch.tensor([[1e4, -1e4], [1e4, -1e4]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # right, right; wrong, wrong
    bfl = binary_focal_loss(x, y, gamma, alpha=0.25)
    (grad,) = torch.autograd.grad(bfl.sum(), x)
    assert torch.isfinite(bfl).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(bfl, torch.tensor([[0.0, 0.0], [0.75e4, 0.25e4]]))


def test_focal_refuses_bad_arguments():
    logits, target = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="alpha has shape"):
        focal_loss(logits, target, alpha=torch.ones(3))
    with pytest.raises(ValueError, match="integer class indices"):
        focal_loss(logits, target.float())
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(logits, target, gamma=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="differ"):
        binary_focal_loss(logits, torch.zeros(3, 3))


# ----------------------------------------------------------------------------------- binary focal


def test_binary_focal_with_gamma_0_is_bce_exactly():
    torch.manual_seed(3)
    logits, targets = torch.randn(8, 5) * 4, torch.rand(8, 5)
    bce = binary_cross_entropy(logits, targets)
    assert torch.equal(binary_focal_loss(logits, targets, gamma=0.0, alpha=None), bce)
    torch.testing.assert_close(bce, F.binary_cross_entropy_with_logits(logits, targets, reduction="none"))


def test_binary_focal_by_hand():
    x = torch.tensor([[0.0, LN3]])  # sigmoid: 1/2, 3/4
    y = torch.tensor([[1.0, 0.0]])  # p_t: 1/2, 1/4
    expected = torch.tensor([[0.25 * 0.5**2 * math.log(2), 0.75 * 0.75**2 * math.log(4)]])
    torch.testing.assert_close(binary_focal_loss(x, y, 2.0, 0.25), expected)
    assert binary_focal_loss(x, y, 2.0, 0.25, "mean").item() == pytest.approx(expected.mean().item())


def test_binary_focal_matches_the_retinanet_formula():
    """The guide's / torchvision's form from probabilities, in float64 on moderate logits."""
    torch.manual_seed(4)
    x, y = torch.randn(16, 6, dtype=torch.float64) * 3, torch.rand(16, 6, dtype=torch.float64)
    p = 1 / (1 + torch.exp(-x))
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = 0.3 * y + 0.7 * (1 - y)
    torch.testing.assert_close(binary_focal_loss(x, y, 1.5, 0.3), alpha_t * (1 - p_t) ** 1.5 * bce)


# -------------------------------------------------------------------------- class-weighted CE


def test_class_weights_by_hand():
    inverse = class_weights_from_counts([10, 30, 0, 60])  # 1/n = [.1, 1/30, -, 1/60], sum .15, times 3/.15
    torch.testing.assert_close(inverse, torch.tensor([2.0, 2 / 3, 0.0, 1 / 3]))
    assert inverse.dtype == torch.float32 and inverse[inverse > 0].mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(class_weights_from_counts(torch.tensor([1, 4, 16]), "inverse_sqrt"),
                               torch.tensor([12 / 7, 6 / 7, 3 / 7]))
    # (1 - b) / (1 - b^n) at b = 1/2: n = 1 -> 1, n = 2 -> 2/3; mean 5/6 -> [6/5, 4/5]
    torch.testing.assert_close(class_weights_from_counts([1, 2], "effective_number", 0.5), torch.tensor([1.2, 0.8]))
    torch.testing.assert_close(class_weights_from_counts([5, 0, 50], "effective_number", 0.0),
                               torch.tensor([1.0, 0.0, 1.0]))
    near_one = class_weights_from_counts([10, 30, 60], "effective_number", 1 - 1e-7)
    torch.testing.assert_close(near_one, class_weights_from_counts([10, 30, 60]), rtol=1e-4, atol=0)


def test_class_weights_refusals():
    with pytest.raises(ValueError, match="all 3 class counts are 0"):
        class_weights_from_counts([0, 0, 0])
    with pytest.raises(ValueError, match="counts >= 0"):
        class_weights_from_counts([3, -1])
    with pytest.raises(ValueError, match="kind="):
        class_weights_from_counts([3, 1], "log")
    with pytest.raises(ValueError, match="beta"):
        class_weights_from_counts([3, 1], "effective_number", 1.0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_weighted_cross_entropy_is_torchs(reduction, eps):
    torch.manual_seed(5)
    logits, labels = torch.randn(12, 4), torch.randint(0, 4, (12,))
    weight = class_weights_from_counts([50, 5, 20, 1])
    expected = F.cross_entropy(logits, labels, weight=weight, label_smoothing=eps, reduction=reduction)
    torch.testing.assert_close(cross_entropy(logits, labels, eps, weight=weight, reduction=reduction), expected)
    soft = torch.softmax(torch.randn(12, 4), -1)  # probability labels: mean over B, not over weights
    expected = F.cross_entropy(logits, soft, weight=weight, label_smoothing=eps, reduction=reduction)
    torch.testing.assert_close(cross_entropy(logits, soft, eps, weight=weight, reduction=reduction), expected)


def test_weighted_smoothed_cross_entropy_by_hand():
    logits = P_QUARTERS.repeat(2, 1)  # -log p = [ln 4, ln 4/3]
    labels, weight, eps = torch.tensor([0, 1]), torch.tensor([2.0, 1.0]), 0.2
    smooth = eps / 2 * (2 * math.log(4) + 1 * math.log(4 / 3))  # (ε/C) Σ_c w_c (-log p_c), the same both rows
    rows = [0.8 * 2 * math.log(4) + smooth, 0.8 * 1 * math.log(4 / 3) + smooth]
    torch.testing.assert_close(cross_entropy(logits, labels, eps, weight), torch.tensor(rows))
    mean = cross_entropy(logits, labels, eps, weight, "mean").item()
    assert mean == pytest.approx(sum(rows) / (2.0 + 1.0))  # divided by Σ_b w_{y_b}, not by B
    with pytest.raises(ValueError, match="one value per class"):
        cross_entropy(logits, labels, weight=torch.ones(3))


# ------------------------------------------------------------------------ uncertainty weighting


def test_uncertainty_weighting_value_and_weights():
    weighting = UncertaintyWeighting(["recon", "machine_id"])
    assert weighting.log_vars.tolist() == [0.0, 0.0]
    assert weighting([torch.tensor(2.5), torch.tensor(0.8)]).item() == pytest.approx(3.3)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([math.log(2.0), -1.0]))
    by_hand = 2.5 / 2 + math.log(2.0) + 0.8 * math.e - 1.0
    total = weighting({"machine_id": torch.tensor(0.8), "recon": torch.tensor(2.5)})
    assert total.item() == pytest.approx(by_hand, rel=1e-6)
    torch.testing.assert_close(weighting.weights, torch.tensor([0.5, math.e]))
    assert weighting.weights_by_name() == pytest.approx({"recon": 0.5, "machine_id": math.e})
    assert not weighting.weights.requires_grad


def test_uncertainty_weighting_gradients_are_analytic():
    weighting = UncertaintyWeighting(3)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.3, -0.5, 1.2]))
    losses = torch.tensor([2.0, 0.4, 7.0], requires_grad=True)
    grad_s, grad_l = torch.autograd.grad(weighting(list(losses.unbind())), [weighting.log_vars, losses])
    s, values = weighting.log_vars.detach(), losses.detach()
    torch.testing.assert_close(grad_s, -torch.exp(-s) * values + 1)  # d total / d s_i
    torch.testing.assert_close(grad_l, torch.exp(-s))  # d total / d L_i: the task weight


def test_uncertainty_weighting_converges_to_log_loss():
    weighting = UncertaintyWeighting(3)
    losses = [torch.tensor(4.0), torch.tensor(0.25), torch.tensor(1.0)]
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.2)
    for _ in range(200):
        optimizer.zero_grad()
        weighting(losses).backward()
        optimizer.step()
    torch.testing.assert_close(weighting.log_vars.detach(), torch.log(torch.tensor([4.0, 0.25, 1.0])), atol=1e-4,
                               rtol=0)
    torch.testing.assert_close(weighting.weights, torch.tensor([0.25, 4.0, 1.0]), atol=1e-3, rtol=0)


def test_uncertainty_weighting_refusals():
    weighting = UncertaintyWeighting(["a", "b"])
    with pytest.raises(ValueError, match="expected exactly the tasks"):
        weighting({"a": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="expected 2 scalars"):
        weighting([torch.tensor(1.0), torch.ones(3)])
    with pytest.raises(ValueError, match="distinct task names"):
        UncertaintyWeighting(["a", "a"])


# ---------------------------------------------------------------------------------- diagnostics


def test_chance_loss_is_the_uniform_prediction_cross_entropy():
    assert chance_loss(10) == pytest.approx(math.log(10))
    assert chance_loss(8, base=2) == pytest.approx(3.0)
    zeros = torch.zeros(4, 10)
    labels = torch.tensor([0, 3, 9, 9])
    for smoothing in (0.0, 0.3):  # any target distribution: one-hot, smoothed, soft
        torch.testing.assert_close(cross_entropy(zeros, labels, smoothing), torch.full((4,), math.log(10)))
    soft = torch.softmax(torch.randn(4, 10), -1)
    torch.testing.assert_close(cross_entropy(zeros, soft), torch.full((4,), math.log(10)))
    with pytest.raises(ValueError, match="at least 2 classes"):
        chance_loss(1)


def test_small_logits_sit_at_the_documented_expansion():
    """``E[CE] ≈ ln K + (K - 1) σ² / (2K)`` for zero-mean logits of spread σ (check_initial_loss's margin)."""
    gen = torch.Generator().manual_seed(6)
    k, sigma = 10, 0.1
    logits = torch.randn(100_000, k, generator=gen, dtype=torch.float64) * sigma
    labels = torch.randint(0, k, (100_000,), generator=gen)
    mean = cross_entropy(logits, labels).mean().item()
    assert mean == pytest.approx(math.log(k) + (k - 1) * sigma**2 / (2 * k), abs=1e-3)


def test_initial_loss_of_a_fresh_head_is_near_chance():
    torch.manual_seed(7)
    head = nn.Linear(32, 10)
    features, labels = torch.randn(256, 32), torch.randint(0, 10, (256,))
    loss = cross_entropy(head(features), labels, reduction="mean").item()
    assert check_initial_loss("machine_id", loss, 10) is None

    with torch.no_grad():
        head.bias[3] = 30.0  # one class predicted with certainty
    loss = cross_entropy(head(features), labels, reduction="mean").item()
    warning = check_initial_loss("machine_id", loss, 10)
    assert warning is not None and "machine_id" in warning and "log K = 2.303" in warning and "50%" in warning


def test_initial_loss_warnings_for_scaling_mistakes_and_non_finite():
    chance = math.log(6)
    assert check_initial_loss("transform", chance * 1.4, 6) is None
    assert check_initial_loss("transform", chance * 32, 6) is not None  # summed over a batch of 32
    assert check_initial_loss("transform", chance * 0.3, 6) is not None  # far below chance: already trained?
    assert check_initial_loss("transform", chance * 1.4, 6, tolerance=0.2) is not None
    assert "nan" in check_initial_loss("transform", float("nan"), 6)
    assert check_initial_loss("bits", math.log2(6), 6, base=2) is None


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 2)
        self.frozen = nn.Linear(4, 2)
        self.frozen.requires_grad_(False)
        self.gate = nn.Parameter(torch.ones(2))  # multiplied by 0: a gradient, all zeros

    def forward(self, x):
        return self.used(x) + self.frozen(x) + 0.0 * self.gate


def test_parameters_without_grad_reports_the_unused_branch():
    module = TwoBranches()
    module(torch.randn(3, 4)).sum().backward()
    assert parameters_without_grad(module) == ["gate", "unused.weight", "unused.bias"]  # named_parameters order
    module.zero_grad()  # set_to_none: nothing has a gradient any more
    assert parameters_without_grad(module) == ["gate", "used.weight", "used.bias", "unused.weight", "unused.bias"]
