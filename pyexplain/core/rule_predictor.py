"""Rule weights predicted per position from the activation: amortized LPR's wider rule family.

Beyond the LPR paper (Yang et al., ECCV 2020; SPEC §3 end). A channel rule shares one ``W_c`` per
channel over all images and positions; a *predictor* rule computes ``W`` at every position from the
activation it gates, with a small per-call network fitted once over a set of images:

    W(p) = b + a ⊙ u(p) + U·(D·u(p)),    u = (f − f_ref) / s

over the channel dimension (dim 1) of ``f`` ``[N, C, ...]``: ``b``, ``a``, ``s`` ``[C]``, ``U``
``[C, r]``, ``D`` ``[r, C]``; ``s`` is the per-channel mean ``|f − f_ref|`` of the fitting images, a
constant that puts every layer's input on one scale. With ``a = 0`` and ``U = 0`` it is the channel
rule ``W = b``. The formula is a fixed graph of elementwise ops and two matrix products, so it exports.
"""
from __future__ import annotations

from torch import Tensor

#: The tensors of one call's predictor besides ``b``: ``a`` ("self"), ``U`` ("up"), ``D`` ("down"), ``s``.
PREDICTOR_KEYS = ("self", "up", "down", "scale")


def channel_view(vector: Tensor, like: Tensor) -> Tensor:
    """A ``[C]`` vector shaped to broadcast over ``like`` ``[N, C, ...]``."""
    return vector.reshape((1, -1) + (1,) * (like.ndim - 2)).to(like.device, like.dtype)


def predicted_weight(shift: Tensor, bias: Tensor, predictor: dict[str, Tensor] | None) -> Tensor:
    """``W`` for activation inputs ``shift = f − f_ref`` ``[N, C, ...]``: ``b`` broadcast per channel
    (``predictor`` None), else ``b + a ⊙ u + U·(D·u)`` with ``u = shift / s``, shaped like ``shift``."""
    weight = channel_view(bias, shift)
    if predictor is None:
        return weight
    u = shift / channel_view(predictor["scale"], shift)
    last = u.ndim - 1  # positive dimensions: ONNX export takes no negative permutation
    mixed = u.movedim(1, last) @ predictor["down"].to(u).t() @ predictor["up"].to(u).t()
    return weight + channel_view(predictor["self"], shift) * u + mixed.movedim(last, 1)


def check_predictor(predictor: object, channels: int, rank: int) -> bool:
    """Whether ``predictor`` is a dict of finite tensors with the shapes of a rank-``rank``,
    ``channels``-channel predictor, with a positive scale."""
    import torch

    if not isinstance(predictor, dict) or not all(isinstance(predictor.get(k), Tensor) for k in PREDICTOR_KEYS):
        return False
    shapes_ok = (predictor["self"].shape == predictor["scale"].shape == (channels,)
                 and predictor["up"].shape == (channels, rank) and predictor["down"].shape == (rank, channels))
    return shapes_ok and all(bool(torch.isfinite(predictor[k]).all()) for k in PREDICTOR_KEYS) and bool(
        (predictor["scale"] > 0).all())
