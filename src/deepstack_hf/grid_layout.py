"""Crop-grid, view and token-count arithmetic shared by the image processor, the processor and the model.

A *grid* is ``(grid_width, grid_height)``: how many 336-pixel crops wide and tall the high-resolution
canvas of an image is (width first; docs/design.md, "The crop grid"). Every function here is pure integer arithmetic so
that the processor (which counts placeholder tokens) and the model (which lays out features) can never
disagree.
"""

import math
import numbers

MAX_NUM_CROPS = 64
"""Largest `num_crops` accepted anywhere (released models use 4; 64 crops are already 65 CLIP views per image)."""


def check_num_crops(num_crops) -> None:
    """`ValueError` unless `num_crops` is an integer in [2, MAX_NUM_CROPS] (checked before any grid is built)."""
    if isinstance(num_crops, bool) or not isinstance(num_crops, numbers.Integral) or not 2 <= num_crops <= MAX_NUM_CROPS:
        raise ValueError(f"num_crops={short_repr(num_crops)} is not allowed; expected an integer in [2, {MAX_NUM_CROPS}].")


def short_repr(value, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, so that a refusal of a huge value stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def candidate_grids(num_crops: int) -> list[tuple[int, int]]:
    """All canvases the original code considers for ``num_crops`` crops, in its (width-major) order.

    Every ``(w, h)`` with ``w`` in ``1..num_crops`` and ``h`` in ``1..num_crops // w``, except ``(1, 1)``.
    """
    return [(w, h) for w in range(1, num_crops + 1) for h in range(1, num_crops // w + 1) if (w, h) != (1, 1)]


def select_best_grid(image_width: int, image_height: int, num_crops: int, crop_size: int) -> tuple[int, int]:
    """LLaVA-NeXT's best-resolution rule over ``candidate_grids(num_crops)``.

    Largest effective resolution ``min(int(W*s) * int(H*s), W*H)`` with ``s = min(cw/W, ch/H)``; ties broken
    by the least wasted canvas area, remaining ties by candidate order (first wins). Returns ``(w, h)``.
    """
    check_num_crops(num_crops)
    if image_width < 1 or image_height < 1:
        raise ValueError(f"Image size must be at least 1x1 pixels, got {image_width}x{image_height}.")
    best_grid, best_effective, best_waste = None, 0, math.inf
    for grid_w, grid_h in candidate_grids(num_crops):
        canvas_w, canvas_h = grid_w * crop_size, grid_h * crop_size
        scale = min(canvas_w / image_width, canvas_h / image_height)
        effective = min(int(image_width * scale) * int(image_height * scale), image_width * image_height)
        waste = canvas_w * canvas_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best_grid, best_effective, best_waste = (grid_w, grid_h), effective, waste
    return best_grid


def square_grid_for(num_crops: int) -> tuple[int, int]:
    """The square grid ``(sqrt N, sqrt N)`` (the original's ``2xsample``); ``num_crops`` must be a square number."""
    side = math.isqrt(num_crops)
    if num_crops < 4 or side * side != num_crops:
        raise ValueError(f"The square grid needs num_crops to be a square number of at least 4, got {num_crops}.")
    return side, side


def image_grid(
    image_width: int, image_height: int, num_crops: int, crop_size: int, square_grid: bool = False
) -> tuple[int, int]:
    """The crop grid ``(w, h)`` of one image: the square grid when ``square_grid``, else [`select_best_grid`].

    The single rule the image processor, the processor (token counts) and the model (layouts) all call.
    """
    if square_grid:
        if image_width < 1 or image_height < 1:
            raise ValueError(f"Image size must be at least 1x1 pixels, got {image_width}x{image_height}.")
        return square_grid_for(num_crops)
    return select_best_grid(image_width, image_height, num_crops, crop_size)


def hd_upsample_factor(num_crops: int) -> int:
    """Side length of the sub-crop grid each HD view is split into: ``int(sqrt(num_crops))``."""
    return math.isqrt(num_crops)


def num_stacks(num_crops: int, hd_layout: bool) -> int:
    """Number of stacks K: ``num_crops`` (plain) or ``int(sqrt(num_crops))**2`` (HD)."""
    return hd_upsample_factor(num_crops) ** 2 if hd_layout else num_crops


def num_views(grid: tuple[int, int], num_crops: int, hd_layout: bool) -> int:
    """How many 336x336 crops the image processor emits for one image with this grid.

    Plain: the global view plus ``w*h`` local crops. HD: those ``1 + w*h`` sequence views, then
    ``s*s`` sub-crops for each of them (``s = hd_upsample_factor(num_crops)``).
    """
    grid_w, grid_h = grid
    sequence_views = 1 + grid_w * grid_h
    if not hd_layout:
        return sequence_views
    return sequence_views * (1 + hd_upsample_factor(num_crops) ** 2)


def max_num_views(num_crops: int, hd_layout: bool) -> int:
    """The most views any image can get under these settings: [`num_views`] of the largest candidate grid.

    Every image's grid is one of ``candidate_grids(num_crops)`` (the square grid, when it is used, is one of them
    too), so padding the view axis to this count lets inputs processed separately stack into one batch.
    """
    return max(num_views(grid, num_crops, hd_layout) for grid in candidate_grids(num_crops))


def view_plan(grid: tuple[int, int], num_crops: int, hd_layout: bool) -> list[tuple[int, int, int]]:
    """The stretches an image's views are cut from, in the views' order: ``(cols, rows, block)`` each.

    Each entry stretches the image to ``(cols * S, rows * S)`` pixels and cuts it into ``S x S`` crops, taken
    block by block (``block x block`` crops each, blocks row-major), row-major inside a block. Plain: the global
    view ``(1, 1, 1)`` and the canvas ``(w, h, 1)``; HD adds ``(u, u, 1)`` and ``(u*w, u*h, u)`` (every grid
    cell's ``u x u`` sub-crops together). ``sum(cols * rows)`` is [`num_views`].
    """
    grid_w, grid_h = grid
    plan = [(1, 1, 1), (grid_w, grid_h, 1)]
    if hd_layout:
        up = hd_upsample_factor(num_crops)
        plan += [(up, up, 1), (grid_w * up, grid_h * up, up)]
    return plan


def num_sequence_views(grid: tuple[int, int]) -> int:
    """Views whose features form the image's tokens in the sequence: the global view and the grid crops."""
    return 1 + grid[0] * grid[1]


def num_image_tokens(grid: tuple[int, int], hd_layout: bool, patches_per_side: int) -> int:
    """Visual tokens one image occupies in the prompt.

    Plain: ``p*p`` (576 for CLIP-L/336). HD: ``p*p + p*h * (p*w + 1)`` (base view, then the grid map with
    one ``image_newline`` token after each of its rows).
    """
    tokens = patches_per_side * patches_per_side
    if hd_layout:
        grid_w, grid_h = grid
        tokens += patches_per_side * grid_h * (patches_per_side * grid_w + 1)
    return tokens
