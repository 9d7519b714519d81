"""Time to draw one explanation figure (pyexplain.visualize) and encode it as PNG, per layout and size.

    python benchmarks/bench_figures.py [--rounds 5]

Candidates are interleaved in one process; each is timed by the calling thread's CPU time
(``time.thread_time``, steady on a shared machine), the fastest of ``--rounds`` rounds is reported
for drawing (figure to RGB image) and PNG encoding (PIL, default level; the images are noise, the
worst case for PNG), with drawing's ratio to the model's view (224 × 224) side by side.
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from pyexplain.visualize import Picture, explanation_image, model_view_box


def case(size: tuple[int, int], layout: str, sign: str):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    values = rng.standard_normal((224, 224))
    if sign == "nonnegative":
        values = np.abs(values)
    picture = Picture(image, model_view_box(size, (224, 224), None))

    def draw() -> Image.Image:
        return explanation_image(picture, values, sign, "image · model · method — target: label (1), p = 0.500", layout)

    def encode(figure: Image.Image) -> int:
        buffer = io.BytesIO()
        figure.save(buffer, format="PNG")
        return buffer.tell()

    return draw, encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = {(size, layout, sign): case(size, layout, sign)
             for size in [(224, 224), (451, 300), (1024, 768)]
             for layout in ["side-by-side", "overlay"] for sign in ["signed", "nonnegative"]}
    best = {key: [float("inf")] * 2 for key in cases}
    for draw, encode in cases.values():  # warm-up: fonts, colormaps
        encode(draw())
    for _ in range(args.rounds):
        for key, (draw, encode) in cases.items():
            start = time.thread_time()
            figure = draw()
            drawn = time.thread_time()
            encode(figure)
            best[key] = [min(best[key][0], drawn - start), min(best[key][1], time.thread_time() - drawn)]
    print("| image | layout | map | s draw | s PNG encode | draw × 224² side by side |")
    print("|---|---|---|---|---|---|")
    for (size, layout, sign), (seconds, png) in best.items():
        base = best[((224, 224), "side-by-side", sign)][0]
        print(f"| {size[0]}×{size[1]} | {layout} | {sign} | {seconds:.3f} | {png:.3f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
