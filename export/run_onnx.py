"""Run an ONNX explainer from ``pyexplain export --format onnx`` with ONNX Runtime on one image, and
write its figure.

    python export/run_onnx.py explainer.onnx cat.jpg out/cat [--target 285]

Preprocessing (input size, resize, mean/std) comes from the file's metadata. Uses the CUDA execution
provider when ONNX Runtime has it, the CPU one otherwise. The explainer runs on ONNX Runtime alone;
the figure is drawn by ``pyexplain.visualize`` (as ``pyexplain explain`` draws it: the image and the
map at the image's resolution, a colour bar, a title). Writes ``OUT.png`` and ``OUT.npy`` (the map
``[H, W]``, float32), atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def view(image: Image.Image, size: tuple[int, int], resize: int | None) -> Image.Image:
    """pyexplain's ``Preprocess.view`` without torch: the whole image resized to ``size`` (bilinear,
    PIL's antialiased filter), or with ``resize`` its shorter side to ``resize`` (the longer one
    ``int(resize · long / short)``) and a centre crop of ``size`` (offsets ``round((side − crop) / 2)``),
    as torchvision's ``resize`` and ``center_crop`` compute them."""
    height, width = size
    image = image.convert("RGB")
    if resize is None:
        return image.resize((width, height), Image.Resampling.BILINEAR)
    short, long = sorted(image.size)
    new_long = int(resize * long / short)
    new_size = (resize, new_long) if image.width <= image.height else (new_long, resize)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BILINEAR)
    top, left = int(round((image.height - height) / 2.0)), int(round((image.width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def preprocess(path: str, meta: dict[str, str]) -> np.ndarray:
    """The image as the explainer's normalized input ``[1, C, H, W]`` float32: :func:`view`, then
    ``(pixel / 255 − mean) / std`` in float32 (torchvision's ``to_tensor`` and ``normalize``)."""
    channels, height, width = (int(v) for v in meta.get("input_shape", "3,224,224").split(","))
    resize = meta.get("resize", "")
    image = view(Image.open(path), (height, width), int(resize) if resize else None)
    mean = np.array([float(v) for v in meta.get("mean", "0.485,0.456,0.406").split(",")], dtype=np.float32)
    std = np.array([float(v) for v in meta.get("std", "0.229,0.224,0.225").split(",")], dtype=np.float32)
    x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return ((x - mean[:, None, None]) / std[:, None, None])[None, :channels].copy()


def write_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def draw(path: str, attribution_map: np.ndarray, meta: dict[str, str], target: int, logits: np.ndarray) -> Image.Image:
    """The figure of ``pyexplain explain``: the whole image, the map on the model's view of it."""
    from pyexplain.errors import PyExplainError
    from pyexplain.registry import get_method
    from pyexplain.visualize import Picture, explanation_image, model_view_box, sign_of, title_line

    image = Image.open(path).convert("RGB")
    _, height, width = (int(v) for v in meta.get("input_shape", "3,224,224").split(","))
    box = model_view_box(image.size, (height, width), int(meta["resize"]) if meta.get("resize") else None)
    method = meta.get("method", "?")
    try:
        sign = get_method(method).map_sign()
    except PyExplainError:  # a method this pyexplain does not know
        sign = sign_of(attribution_map)
    probabilities = np.exp(logits - logits.max())
    title = title_line(meta.get("model", "?"), method, target, str(target),
                       float(probabilities[target] / probabilities.sum()), Path(path).name)
    return explanation_image(Picture(image, box), attribution_map, sign, title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("explainer")
    parser.add_argument("image")
    parser.add_argument("out", help="output prefix: writes OUT.png and OUT.npy")
    parser.add_argument("--target", type=int, default=-1, help="class index (default: top-1)")
    args = parser.parse_args(argv)

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(args.explainer, providers=providers)
    meta = session.get_modelmeta().custom_metadata_map
    x = preprocess(args.image, meta)
    logits, attribution = session.run(["logits", "attribution"], {"image": x, "target": np.array([args.target])})
    target = int(logits[0].argmax()) if args.target < 0 else args.target
    attribution_map = attribution[0].sum(0).astype(np.float32)

    out = Path(args.out)
    npy, png = out.with_name(out.name + ".npy"), out.with_name(out.name + ".png")
    def save_npy(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.save would append ".npy" to a name
            np.save(handle, attribution_map)

    write_atomically(npy, save_npy)
    figure = draw(args.image, attribution_map, meta, target, logits[0])
    write_atomically(png, lambda tmp: figure.save(tmp, format="PNG"))
    print(f"{meta.get('method', '?')} on {session.get_providers()[0]}: target {target}, "
          f"logit {logits[0, target]:.6f} -> {npy}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
