"""Insertion/deletion, cIM, localization, ROAR and sanity metrics on tiny cases with known answers."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from pyexplain.data.training import Split, seeded_init, train_classifier
from pyexplain.errors import PyExplainError
from pyexplain.metrics import (
    complementary_insertion, deletion, insertion, model_randomization, pointing_game, relevance_mass, remove_top,
    roar, spearman,
)
from pyexplain.metrics.insertion import blurred, rise_step_counts
from pyexplain.metrics.sanity import learnable_layers, randomized_copy


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def two_class_linear(weights):
    """logits = [w·x, 0]: p(class 0) = sigmoid(w·x)."""
    layer = nn.Linear(len(weights), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weights, [0.0] * len(weights)]))
        layer.bias.zero_()
    return nn.Sequential(nn.Flatten(), layer).eval()


def test_deletion_hand_computed():
    model = two_class_linear([1.0, 1.0, 1.0, 1.0])
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    d = deletion(model, x, x, targets=0)
    expected = [sigmoid(s) for s in (10, 6, 3, 1, 0)]  # 4, 3, 2, 1 deleted in turn
    assert torch.allclose(d.curve[0], torch.tensor(expected), atol=1e-6)
    assert d.auc.item() == pytest.approx(np.trapezoid(expected, dx=1 / 4), abs=1e-6)


def test_step_counts_follow_the_224_rule():
    assert rise_step_counts(224 * 224)[:3] == [0, 224, 448] and len(rise_step_counts(224 * 224)) == 225
    counts = rise_step_counts(112 * 112)  # scaled: 56 px per step, still 224 steps
    assert counts[1] == 56 and counts[-1] == 112 * 112 and len(counts) == 225
    assert rise_step_counts(64) == list(range(65))  # tiny images: one pixel per step


def test_blur_is_the_11_tap_sigma_5_gaussian_with_reflect_padding():
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    k = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 25.0))
    k /= k.sum()
    a = np.pad(x.numpy(), ((0, 0), (0, 0), (5, 5), (5, 5)), mode="reflect")
    rows = sum(k[i] * a[:, :, i:i + 16, :] for i in range(11))
    expected = sum(k[j] * rows[:, :, :, j:j + 16] for j in range(11))
    assert np.allclose(blurred(x).numpy(), expected, atol=1e-10)


def test_insertion_matches_a_direct_loop():
    torch.manual_seed(0)
    w = torch.randn(36)
    model = two_class_linear(w.tolist())
    x = torch.randn(2, 1, 6, 6)
    attribution = torch.randn(2, 6, 6)
    result = insertion(model, x, attribution, targets=0)
    base = blurred(x)
    for i in range(2):
        order = np.argsort(-attribution[i].flatten().numpy(), kind="stable")
        image, values = base[i].flatten().clone(), []
        for k in range(37):
            image[order[:k]] = x[i].flatten()[order[:k]]
            values.append(sigmoid(float(image @ w)))
        assert np.allclose(result.curve[i].numpy(), values, atol=1e-5)
        assert result.auc[i].item() == pytest.approx(np.trapezoid(values, dx=1 / 36), abs=1e-5)


def halves_model_and_image():
    """8×8 image; class 0 is a matched filter on the left half, class 1 on the right, class 2 a constant."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 8, 8) * 2
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    w = torch.stack([(x[0, 0] * left).flatten(), (x[0, 0] * (1 - left)).flatten(), torch.zeros(64)]) * 0.3
    layer = nn.Linear(64, 3)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(torch.tensor([0.0, 0.0, 4.0]))
    attribution = (2 * left - 1)[None] * (1 + torch.rand(1, 8, 8))  # + on the left (class 0), − on the right
    return nn.Sequential(nn.Flatten(), layer).eval(), x, attribution


def test_cim_equals_insertion_of_the_negated_map_for_the_other_class():
    model, x, attribution = halves_model_and_image()
    c = complementary_insertion(model, x, attribution, torch.tensor([0]), torch.tensor([[1]]))
    i = insertion(model, x, -attribution, targets=1)
    assert torch.allclose(c.curve, i.curve) and torch.allclose(c.auc, i.auc)
    # the map whose negative side marks class 1's pixels beats the reversed one
    worse = complementary_insertion(model, x, -attribution, torch.tensor([0]), torch.tensor([[1]]))
    assert c.auc.item() > worse.auc.item() + 0.05
    with pytest.raises(PyExplainError):
        complementary_insertion(model, x, attribution, torch.tensor([0]), torch.tensor([[0]]))


def test_pointing_game_tolerance_and_ties():
    regions = torch.zeros(3, 32, 32, dtype=torch.bool)
    regions[:, 10:14, 10:14] = True
    maps = torch.zeros(3, 32, 32)
    maps[0, 12, 12] = 1  # inside
    maps[1, 12, 15] = 1  # 2 px from the region: tolerance 15·32/224 ≈ 2.14 → hit
    maps[2, 12, 16] = 1  # 3 px → miss
    assert pointing_game(maps, regions).tolist() == [True, True, False]
    assert pointing_game(maps, regions, tolerance=0).tolist() == [True, False, False]
    tied = torch.ones(1, 32, 32)  # all tied: the first maximum (0, 0) is far from the region
    assert pointing_game(tied, regions[:1]).tolist() == [False]
    with pytest.raises(PyExplainError):
        pointing_game(maps, torch.zeros(3, 32, 32, dtype=torch.bool))


def test_relevance_mass_hand_computed():
    maps = torch.tensor([[[1.0, -1.0], [2.0, 0.0]], [[-1.0, -2.0], [0.0, 0.0]]])
    regions = torch.tensor([[[True, True], [False, False]]] * 2)
    assert torch.allclose(relevance_mass(maps, regions), torch.tensor([1 / 3, 0.0]))
    assert torch.allclose(relevance_mass(maps[:, None].expand(-1, 3, -1, -1) / 3, regions), torch.tensor([1 / 3, 0.0]))


def test_spearman_matches_scipy_with_ties():
    torch.manual_seed(0)
    a = torch.randint(0, 5, (3, 40)).float()
    b = a + torch.randint(0, 3, (3, 40)).float()
    ours = spearman(a, b)
    for row in range(3):
        assert ours[row].item() == pytest.approx(spearmanr(a[row], b[row]).statistic, abs=1e-9)
    assert math.isnan(spearman(torch.ones(1, 5), torch.arange(5.0)[None]).item())


def test_randomized_copy_redraws_only_the_named_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 200), nn.ReLU(), nn.Linear(200, 3))
    assert learnable_layers(model) == ["0", "3", "5"]
    copy = randomized_copy(model, ["3"], seed=1)
    assert torch.equal(copy[0].weight, model[0].weight) and torch.equal(copy[5].weight, model[5].weight)
    assert not torch.equal(copy[3].weight, model[3].weight) and copy[3].bias.abs().max() == 0
    assert copy[3].weight.std().item() == pytest.approx(math.sqrt(2 / 3600), rel=0.02)


def test_last_layer_randomization_of_a_linear_model():
    # Signed saliency of a linear model is the target's weight row, so the correlation is
    # Spearman(w_t, w'_t) with w' the randomized copy's weights (same seed).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.randn(2, 1, 4, 4)
    t = model(x).argmax(1)
    rho = model_randomization(model, x, "saliency", seed=3, options={"absolute": False})["1"]
    copy = randomized_copy(model, ["1"], seed=3)
    for i in range(2):
        expected = spearmanr(model[1].weight[t[i]].detach(), copy[1].weight[t[i]].detach()).statistic
        assert rho[i].item() == pytest.approx(expected, abs=1e-6)
    cascade = model_randomization(model, x, "saliency", cascading=True, seed=3, options={"absolute": False})
    assert list(cascade) == ["1"]


def test_remove_top_sets_the_top_pixels_to_the_fill():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = remove_top(x, x, 0.5, torch.tensor([9.0]))
    assert out.tolist() == [[[[1.0, 2.0], [9.0, 9.0]]]]


@pytest.mark.parametrize("fill", ["mean", "linear"])
def test_roar_on_a_one_pixel_task(fill):
    # The label is the sign of pixel (0, 0); the other 3 pixels are noise, so removing it erases the label.
    g = torch.Generator().manual_seed(0)

    def data(n):
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, 1, 2, 2, generator=g) * 0.5
        x[:, 0, 0, 0] = (2 * y - 1).float() * (1 + torch.rand(n, generator=g))
        return Split(x, y)

    def informative(split):
        maps = torch.zeros(len(split), 2, 2)
        maps[:, 0, 0] = 1.0
        return maps

    def fit(split):
        return train_classifier(seeded_init(lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 0), split,
                                epochs=30, lr=0.05, seed=0)

    train, test = data(400), data(200)
    random_train, random_test = torch.rand(400, 2, 2, generator=g), torch.rand(200, 2, 2, generator=g)
    good = roar(train, test, informative(train), informative(test), fit, fractions=[0.0, 0.25], fill=fill)
    rand = roar(train, test, random_train, random_test, fit, fractions=[0.25], fill=fill)
    assert good[0.0] > 0.95  # nothing removed: the task is learnable
    assert good[0.25] < 0.65  # the one informative pixel removed everywhere: chance
    assert rand[0.25] > 0.75  # a random map removes it from a quarter of the images only
    with pytest.raises(PyExplainError):
        roar(train, test, informative(train), informative(test), fit, fractions=[0.25], fill="zero")
