"""Where DeepStack puts each projected visual token: in the prompt sequence, or in one of the K stacks.

Every function here is a pure tensor rearrangement of one image's per-view features (no weights except the
``image_newline`` vector handed in), so the layouts can be checked against hand-built tensors.

Shapes use ``p`` = patches per side of one view, ``(w, h)`` = the image's crop grid (width first),
``s`` = the HD upsample factor and ``D`` = the decoder's hidden size. A view's ``p*p`` tokens are row-major.
"""

import math

import torch

from .grid_layout import hd_upsample_factor, num_sequence_views


def tile_views(views: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tiles row-major crops back into one feature map.

    Args:
        views: `(w*h, p*p, D)`, the grid's crops in row-major order.
        grid: `(w, h)`.

    Returns:
        `(p*h, p*w, D)`: the crops' patch maps placed side by side.
    """
    grid_w, grid_h = grid
    side = math.isqrt(views.shape[1])
    tiles = views.reshape(grid_h, grid_w, side, side, -1)
    return tiles.permute(0, 2, 1, 3, 4).reshape(grid_h * side, grid_w * side, -1)


def sample_stacks(feature_map: torch.Tensor, grid: tuple[int, int], sampling: str) -> torch.Tensor:
    """Draws the `w*h` plain-layout stacks from the tiled high-resolution map.

    Args:
        feature_map: `(p*h, p*w, D)` from [`tile_views`].
        grid: `(w, h)`.
        sampling: `"2d"`: stack `(i, j)` (i-major) is rows `i::h`, columns `j::w`. `"1d"`: stack `k` is tokens
            `k::(w*h)` of the row-major flattened map. `"grid"`: stack `k` is the `k`-th crop's own tokens.

    Returns:
        `(w*h, p*p, D)`.
    """
    grid_w, grid_h = grid
    hidden = feature_map.shape[-1]
    if sampling == "2d":
        stacks = [feature_map[i::grid_h, j::grid_w] for i in range(grid_h) for j in range(grid_w)]
        return torch.stack(stacks).reshape(grid_w * grid_h, -1, hidden)
    if sampling == "1d":
        flat = feature_map.reshape(-1, hidden)
        return torch.stack([flat[k :: grid_w * grid_h] for k in range(grid_w * grid_h)])
    if sampling == "grid":
        side_h, side_w = feature_map.shape[0] // grid_h, feature_map.shape[1] // grid_w
        crops = feature_map.view(grid_h, side_h, grid_w, side_w, hidden).permute(0, 2, 1, 3, 4)
        return crops.reshape(grid_w * grid_h, side_h * side_w, hidden)
    raise ValueError(f"Unknown stack sampling {sampling!r}; expected '2d', '1d' or 'grid'.")


def plain_layout(
    views: torch.Tensor, grid: tuple[int, int], num_crops: int, sampling: str = "2d"
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepStack-L: the global view goes in the sequence, the local crops become the stacks.

    Args:
        views: `(1 + w*h, p*p, D)`: the global view, then the grid's crops row-major.
        grid: `(w, h)`.
        num_crops: number of stacks K; grids with fewer crops get zero stacks at the end.
        sampling: see [`sample_stacks`].

    Returns:
        `sequence` `(p*p, D)` and `stacks` `(num_crops, p*p, D)`.
    """
    stacks = sample_stacks(tile_views(views[1:], grid), grid, sampling)
    missing = views.new_zeros(num_crops - stacks.shape[0], *stacks.shape[1:])
    return views[0], torch.cat([stacks, missing])


def vision_tower_stacks(local_states: torch.Tensor) -> torch.Tensor:
    """DeepStack-V: the stacks of every image from its local views' vision-tower states at the split layer.

    The `n*n` local views of an image (CLS dropped) are tiled into a `(n*p) x (n*p)` mosaic, crop `r*n + c` at
    block `(r, c)`; stack `k = a*n + b` is mosaic rows `a::n`, columns `b::n`, row-major: the plain layout's
    `"2d"` sampling on the square grid `(n, n)`.

    Args:
        local_states: `(num_images, n*n, p*p, C)`, each image's crops row-major.

    Returns:
        `(num_images, n*n, p*p, C)`: stack k of image i at `[i, k]`.
    """
    side = math.isqrt(local_states.shape[1])
    grid = (side, side)
    return torch.stack([sample_stacks(tile_views(views, grid), grid, "2d") for views in local_states])


def hd_sequence(views: torch.Tensor, grid: tuple[int, int], image_newline: torch.Tensor) -> torch.Tensor:
    """LLaVA-NeXT's layout without unpadding: base view, then the grid map with `image_newline` after each row.

    Args:
        views: `(1 + w*h, p*p, D)`: the base view, then the grid's crops row-major.
        grid: `(w, h)`.
        image_newline: `(D,)`.

    Returns:
        `(p*p + p*h * (p*w + 1), D)`.
    """
    feature_map = tile_views(views[1:], grid)
    newlines = image_newline.to(feature_map.dtype).expand(feature_map.shape[0], 1, -1)
    rows = torch.cat([feature_map, newlines], dim=1)
    return torch.cat([views[0], rows.reshape(-1, rows.shape[-1])])


def hd_layout(
    views: torch.Tensor, grid: tuple[int, int], num_crops: int, image_newline: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepStack-L-HD: the sequence views form [`hd_sequence`]; their sub-crops form `s*s` stacks of that layout.

    Args:
        views: `((1 + w*h) * (1 + s*s), p*p, D)`: the `1 + w*h` sequence views, then, for each of them in the
            same order, its `s*s` sub-crops row-major.
        grid: `(w, h)`.
        num_crops: sets `s = isqrt(num_crops)`.
        image_newline: `(D,)`.

    Returns:
        `sequence` `(T, D)` and `stacks` `(s*s, T, D)` with `T = p*p + p*h * (p*w + 1)`. Stack `(a, b)` (a-major)
        holds rows `a::s`, columns `b::s` of every sequence view's `(p*s, p*s)` sub-crop map.
    """
    upsample = hd_upsample_factor(num_crops)
    sequence_views = num_sequence_views(grid)
    side = math.isqrt(views.shape[1])
    sub_crops = views[sequence_views:].view(sequence_views, upsample, upsample, side, side, -1)
    sub_maps = sub_crops.permute(0, 1, 3, 2, 4, 5).reshape(sequence_views, upsample * side, upsample * side, -1)
    stacks = [
        hd_sequence(sub_maps[:, a::upsample, b::upsample].flatten(1, 2), grid, image_newline)
        for a in range(upsample)
        for b in range(upsample)
    ]
    return hd_sequence(views[:sequence_views], grid, image_newline), torch.stack(stacks)


__all__ = ["hd_layout", "hd_sequence", "plain_layout", "sample_stacks", "tile_views", "vision_tower_stacks"]
