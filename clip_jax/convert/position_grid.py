"""An image tower's position embeddings at another image size, so that weights trained at one
resolution start a run at another: the paper's ViT-L/14@336 is its ViT-L/14 trained one more
epoch at 336 px (Radford et al. 2021, section 2.5; `configs/vit_l14_336.py`), and FixRes-style
fine-tunes do the same.

The grid (a ViT's patches, a ModifiedResNet's final feature map under its attention pool) is
resized as open_clip's `resize_pos_embed` resizes a ViT's when it loads a checkpoint: bicubic,
antialiased, corners not aligned (torch's `F.interpolate`), the leading class (ViT) or mean
(attention pool) token kept as it is. The weights are `preprocess.cubic_taps`, torch's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clip_jax.data.preprocess import cubic_taps
from clip_jax.models.config import VisionConfig

# Where each image tower keeps its grid's embeddings, by `VisionConfig.is_resnet`.
POSITION_PARAMS = {False: ("visual", "positional_embedding"),
                   True: ("visual", "attnpool", "positional_embedding")}


def _resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float64: one axis's resize as a matrix of `cubic_taps`."""
    first, weights = cubic_taps(in_size, out_size)
    matrix = np.zeros((out_size, in_size), np.float64)
    columns = np.minimum(first[:, None] + np.arange(weights.shape[1]), in_size - 1)
    np.add.at(matrix, (np.arange(out_size)[:, None], columns), weights)
    return matrix


def resize_grid(positions: np.ndarray, grid_size: int) -> np.ndarray:
    """[1 + g * g, width] position embeddings (a leading token, then a g x g grid row-major)
    as [1 + grid_size ** 2, width], in their dtype (computed in float64). ValueError when the
    rows are no square grid after the token."""
    rows, width = positions.shape
    side = int(round((rows - 1) ** 0.5))
    if side * side != rows - 1:
        raise ValueError(f"{rows} position embeddings are not one token and a square grid.")
    if side == grid_size:
        return positions
    grid = np.asarray(positions[1:], np.float64).reshape(side, side, width)
    matrix = _resize_matrix(side, grid_size)
    resized = np.einsum("Hh,Ww,hwc->HWc", matrix, matrix, grid)
    return np.concatenate([np.asarray(positions[:1], np.float64),
                           resized.reshape(grid_size * grid_size, width)]).astype(positions.dtype)


def resize_image_positions(variables: dict[str, Any], trained: VisionConfig,
                           wanted: VisionConfig) -> dict[str, Any]:
    """`variables` with the image tower's position embeddings resized from `trained`'s grid
    to `wanted`'s (`VisionConfig.grid_size`; the two towers must differ in image size only);
    the other arrays are shared, not copied."""
    *parents, leaf = POSITION_PARAMS[trained.is_resnet]
    variables = dict(variables)
    node = variables["params"] = dict(variables["params"])
    for key in parents:
        node[key] = dict(node[key])
        node = node[key]
    node[leaf] = resize_grid(np.asarray(node[leaf]), wanted.grid_size)
    return variables
