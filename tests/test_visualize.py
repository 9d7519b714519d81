"""Figures: colour scales checked on rendered pixels, the model's view placed on the image, titles,
and every method's declared map sign against the maps it gives."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import pyexplain
from pyexplain.models import Preprocess
from pyexplain.registry import get_method, list_methods
from pyexplain.visualize import (
    Picture, colormap, explanation_figure, figure_image, heatmap, map_norm, model_picture, model_view_box, overlay, panel_size,
    title_line)

from cli_support import run_cli


def rendered(figure) -> np.ndarray:
    return np.asarray(figure_image(figure)).astype(int)


def pixel_at(figure, pixels: np.ndarray, axes, x: float, y: float) -> np.ndarray:
    """The rendered RGB pixel at data point ``(x, y)`` of ``axes`` (display origin is bottom-left)."""
    column, row = axes.transData.transform((x, y))
    return pixels[int(pixels.shape[0] - row), int(column)]


def signed_map() -> np.ndarray:
    """60 × 90: negative ramp on the left third, exactly zero in the middle, positive ramp on the right."""
    ramp = np.linspace(0.2, 1.0, 30)
    row = np.concatenate([-ramp[::-1], np.zeros(30), ramp])
    return np.tile(row, (60, 1))


def test_signed_map_zero_is_the_neutral_colour_and_has_a_colour_bar():
    values = signed_map()
    figure = explanation_figure(Picture(Image.new("RGB", (90, 60), "gray")), values, "signed", "t")
    pixels = rendered(figure)
    image_axes, map_axes, bar_axes = figure.axes
    centre = np.array(colormap("signed")(0.5, bytes=True)[:3])
    assert np.abs(pixel_at(figure, pixels, map_axes, 45, 30) - centre).max() <= 1  # a zero-valued location
    assert map_axes.images[0].norm.vmin == -map_axes.images[0].norm.vmax == pytest.approx(-0.995, abs=0.01)
    # The colour bar: the centre colour at 0, the scale's end colours at ±s.
    s = map_axes.images[0].norm.vmax
    assert np.abs(pixel_at(figure, pixels, bar_axes, 0.5, 0.0) - centre).max() <= 1
    assert np.abs(pixel_at(figure, pixels, bar_axes, 0.5, 0.98 * s) - colormap("signed")(1.0, bytes=True)[:3]).max() <= 12
    assert np.abs(pixel_at(figure, pixels, bar_axes, 0.5, -0.98 * s) - colormap("signed")(0.0, bytes=True)[:3]).max() <= 12
    red, green, blue = pixel_at(figure, pixels, map_axes, 88, 30)  # strongly positive: dark red
    assert red > 2 * blue and red > 2 * green
    red, green, blue = pixel_at(figure, pixels, map_axes, 2, 30)  # strongly negative: dark blue
    assert blue > 2 * red and blue > green


def test_smooth_nonnegative_map_spreads_over_the_colormap():
    """A smooth non-negative map (plus one extreme pixel) uses the whole sequential colormap, not a wash."""
    y, x = np.mgrid[0:64, 0:96]
    values = np.exp(-((x - 48) ** 2 + (y - 32) ** 2) / (2 * 20.0 ** 2))
    values[5, 5] = 50.0  # one extreme pixel must not squash the rest into the darkest colour
    figure = explanation_figure(Picture(Image.new("RGB", (96, 64))), values, "nonnegative", "t")
    pixels = rendered(figure)
    _, map_axes, bar_axes = figure.axes
    left, bottom = map_axes.transData.transform((1, 63))
    right, top = map_axes.transData.transform((95, 1))
    inside = pixels[int(pixels.shape[0] - top):int(pixels.shape[0] - bottom), int(left):int(right)].reshape(-1, 3)
    colours = np.unique(inside, axis=0)
    assert len(colours) > 100
    lut = colormap("nonnegative")(np.linspace(0, 1, 256), bytes=True)[:, :3].astype(int)
    nearest = np.abs(colours[:, None, :] - lut[None]).sum(2).argmin(1)  # position of each colour on the colormap
    assert nearest.min() < 20 and nearest.max() > 235
    assert 0 <= map_axes.images[0].norm.vmin < map_axes.images[0].norm.vmax < 1.01
    assert bar_axes.get_ylim()[0] >= 0  # the colour bar shows the non-negative scale


def test_map_norms_are_robust_and_handle_flat_maps():
    values = np.linspace(-1, 1, 1001)
    values[0] = -1000.0
    assert map_norm(values, "signed").vmax == pytest.approx(np.percentile(np.abs(values), 99.5))
    assert map_norm(np.zeros((3, 3)), "signed").vmax == 1.0
    flat = map_norm(np.full((3, 3), 0.7), "nonnegative")
    assert flat.vmin == 0.7 and flat.vmax > 0.7
    with pytest.raises(ValueError):
        map_norm(values, "positive")


def test_heatmap_and_overlay_keep_the_map_size_and_neutral_zero():
    values = signed_map()
    assert heatmap(values, "signed").size == (90, 60)
    assert np.asarray(heatmap(values, "signed"))[30, 45].tolist() == list(colormap("signed")(0.5, bytes=True)[:3])
    image = Image.new("RGB", (180, 120), (0, 0, 0))
    blended = np.asarray(overlay(image, values, "signed"))
    assert blended.shape == (60, 90, 3)
    assert blended[30, 45].tolist() == [140, 140, 140]  # zero: the faded image alone (0.55·255 on black)
    assert blended[30, 88, 0] > blended[30, 88, 2]


def test_figure_panels_are_at_the_image_resolution():
    figure = explanation_figure(Picture(Image.new("RGB", (300, 200))), np.ones((50, 50)), "nonnegative", "t")
    image_axes, map_axes, _ = figure.axes
    for axes in (image_axes, map_axes):
        assert axes.get_window_extent().size == pytest.approx((300, 200), abs=1)
    assert panel_size(4000, 3000) == (1024, 768) and panel_size(32, 16) == (384, 192)
    wide = explanation_figure(Picture(Image.new("RGB", (300, 200))), np.ones((50, 50)), "signed", "t", "overlay")
    assert len(wide.axes) == 2 and figure_image(wide).width < figure_image(figure).width


def test_model_view_box_matches_torchvision_resize_and_centre_crop():
    """The box is where torchvision's resize + centre crop takes its pixels: an image whose red and
    blue values are each pixel's x and y, passed through the real preprocessing, shows the box's edges."""
    width, height = 250, 160
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    coded = Image.fromarray(np.stack([x, np.zeros_like(x), y], axis=2).astype(np.uint8))
    view = np.asarray(Preprocess(size=100, mean=(0,) * 3, std=(1,) * 3, labels=(), resize=120).view(coded), dtype=float)
    left, top, right, bottom = model_view_box((width, height), (100, 100), 120)
    sx, sy = (right - left) / 100, (bottom - top) / 100  # original pixels per model pixel
    # The first / last column and row of the view hold the original pixels centred half a model pixel in.
    assert view[50, 0, 0] == pytest.approx(left + sx / 2 - 0.5, abs=1)
    assert view[50, -1, 0] == pytest.approx(right - sx / 2 - 0.5, abs=1)
    assert view[0, 50, 2] == pytest.approx(top + sy / 2 - 0.5, abs=1)
    assert view[-1, 50, 2] == pytest.approx(bottom - sy / 2 - 0.5, abs=1)
    assert model_view_box((500, 300), (224, 224), None) == (0, 0, 500, 300)


def test_title_line_names_model_method_target_and_probability():
    assert title_line("resnet18", "gradcam", 285, "Egyptian cat", 0.80312, "cat.jpg") == \
        "cat.jpg · resnet18 · gradcam — target: Egyptian cat (285), p = 0.803"
    assert title_line("m", "", 3, "three", logit=2.5) == "m — target: three (3), logit = 2.5"
    assert title_line("m", "x", 7, "7", 0.5) == "m · x — target: 7, p = 0.500"  # no class names


def test_explain_cli_titles_each_figure_with_its_prediction(tmp_path, capsys, monkeypatch):
    import pyexplain.visualize as visualize

    titles, drawn = [], visualize.explanation_image

    def spy(picture, attribution_map, sign, title, layout="side-by-side"):
        titles.append((title, sign, layout, picture.image.size))
        return drawn(picture, attribution_map, sign, title, layout)

    monkeypatch.setattr(visualize, "explanation_image", spy)
    code, stdout, _ = run_cli(["explain", "builtin:chelsea", "--method", "gradcam", "--out", str(tmp_path), "--json",
                               "--device", "cpu", "--layout", "overlay"], capsys)
    assert code == 0
    record = json.loads(stdout)[0]
    top = record["top5"][0]
    assert titles == [(f"chelsea · efficientnet_lite0 · gradcam — target: {top['label']} ({top['index']}), "
                       f"p = {top['probability']:.3f}", "nonnegative", "overlay", (451, 300))]
    assert Image.open(tmp_path / "chelsea_gradcam.png").height > 300  # the photo's own resolution


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


CHEAP = {"blur_ig": {"steps": 4}, "dmbp": {"iterations": 3}, "lpr": {"iterations": 2},
         "extremal_perturbation": {"iterations": 3, "sigma": 3.0, "blur_sigma": 2.0, "step": 3},
         "meaningful_perturbation": {"iterations": 3, "mask_size": 8, "blur_sigma": 2.0},
         "integrated_gradients": {"steps": 4}, "occlusion": {"window": 8, "stride": 8}, "rise": {"masks": 16, "cells": 4},
         "smoothgrad": {"samples": 4}, "smoothgrad_sq": {"samples": 4}}


CASES = [(info.name, CHEAP.get(info.name, {})) for info in list_methods()] + [
    ("saliency", {"absolute": False})]


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}{'-' if o else ''}{'-'.join(map(str, o.values()))}" for n, o in CASES])
def test_declared_map_sign_matches_the_maps(name, options):
    """A method declared non-negative gives no negative value; a signed one gives both signs."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    info = get_method(name)
    attribution_map = pyexplain.explain(model, x, info.name, **options).map
    scale = attribution_map.abs().max()
    if info.map_sign(options) == "nonnegative":
        assert attribution_map.min() >= -1e-6 * scale
    else:
        assert attribution_map.min() < -1e-3 * scale and attribution_map.max() > 1e-3 * scale


def test_model_picture_places_the_map_on_the_crop_or_shows_the_models_view():
    crop = Preprocess(size=224, mean=(0,) * 3, std=(1,) * 3, labels=(), resize=256)
    photo = Image.new("RGB", (512, 384), "gray")
    whole = model_picture(photo, crop, "image")
    assert whole.image.size == (512, 384) and not whole.covers_all()
    assert whole.box == pytest.approx(model_view_box((512, 384), (224, 224), 256))
    seen = model_picture(photo, crop, "model")
    assert seen.image.size == (224, 224) and seen.covers_all()
    stretched = model_picture(photo, Preprocess(size=224, mean=(0,) * 3, std=(1,) * 3, labels=()), "image")
    assert stretched.covers_all() and stretched.image.size == (512, 384)


def test_explain_cli_refuses_an_unknown_layout_or_view(tmp_path, capsys):
    for flag in ("--layout", "--view"):
        code, _, err = run_cli(["explain", "builtin:chelsea", flag, "sideways", "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and "sideways" in err
    assert not (tmp_path / "o").exists()


def test_html_report_thumbnails_use_each_methods_scale():
    """A Grad-CAM thumbnail is coloured from the sequential colormap, a Grad×Input one from the
    diverging one with zero at its centre colour, and each cell gives its scale."""
    import base64
    import io
    import re

    from pyexplain.evaluation import EvalSet, Evaluation
    from pyexplain.html_report import render

    ramp = torch.linspace(0, 1, 16).repeat(16, 1)[None]
    signed = torch.tensor(signed_map(), dtype=torch.float32)[None]
    evaluation = Evaluation(EvalSet(torch.zeros(1, 3, 16, 16), ["one"]), torch.tensor([0]), [],
                            maps={"gradcam": ramp, "gradxinput": signed}, seconds={"gradcam": 0.0, "gradxinput": 0.0})
    page = render(evaluation, torch.zeros(1, 3, 16, 16), {}, "t")
    cells = re.findall(r'<td><img src="data:image/png;base64,([^"]+)"><br>([^<]+)</td>', page)
    # the ramp's 0.5th / 99.5th percentiles are its ends (each value fills a column of 16); 1 fills 2 % of |signed|
    assert [text for _, text in cells] == ["0 – 1", "±1"]
    pictures = [np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")) for data, _ in cells]
    cam_colours = np.unique(pictures[0].reshape(-1, 3), axis=0)
    lut = colormap("nonnegative")(np.linspace(0, 1, 256), bytes=True)[:, :3].astype(int)
    assert len(cam_colours) >= 15 and np.abs(cam_colours[:, None].astype(int) - lut[None]).sum(2).min(1).max() == 0
    centre = list(colormap("signed")(0.5, bytes=True)[:3])
    thumbnail = pictures[1]
    assert thumbnail[thumbnail.shape[0] // 2, thumbnail.shape[1] // 2].tolist() == centre
