"""Stack layouts against hand-built expectations.

Every view's features are `(view, row, col)` triples, so each output row says exactly which token it holds;
the expected tensors are written out token by token from the wording of docs/design.md ("Features"), with
plain Python loops.
"""

import pytest
import torch

from deepstack_hf.grid_layout import candidate_grids, num_image_tokens, num_views
from deepstack_hf.stack_layout import hd_layout, plain_layout

P = 3  # patches per side: small, odd and unlike every grid side, so mixed-up axes show
NUM_CROPS = 4
GRIDS = candidate_grids(NUM_CROPS)
NEWLINE = torch.tensor([-1.0, -1.0, -1.0])
PAD = [0.0, 0.0, 0.0]


def labelled_views(count: int) -> torch.Tensor:
    """`(count, P*P, 3)`: token `(r, c)` of view `v` is `[v + 1, r, c]` (from 1, so zero padding stands out)."""
    return torch.tensor([[[v + 1, r, c] for r in range(P) for c in range(P)] for v in range(count)], dtype=torch.float)


def tile_token(grid, big_row, big_col, first_view):
    """The `[view, row, col]` at `(big_row, big_col)` of the tiled map of views `first_view ...` (row-major crops)."""
    grid_w = grid[0]
    return [first_view + 1 + (big_row // P) * grid_w + big_col // P, big_row % P, big_col % P]


def test_candidate_grids_are_the_seven_of_spec():
    assert sorted(GRIDS) == sorted([(2, 1), (1, 2), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2)])


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_plain_2d(grid):
    grid_w, grid_h = grid
    sequence, stacks = plain_layout(labelled_views(1 + grid_w * grid_h), grid, NUM_CROPS, "2d")
    expected = [
        [tile_token(grid, r * grid_h + i, c * grid_w + j, first_view=1) for r in range(P) for c in range(P)]
        for i in range(grid_h)
        for j in range(grid_w)
    ]
    expected += [[PAD] * (P * P)] * (NUM_CROPS - grid_w * grid_h)
    torch.testing.assert_close(sequence, labelled_views(1)[0], rtol=0, atol=0)
    torch.testing.assert_close(stacks, torch.tensor(expected, dtype=torch.float), rtol=0, atol=0)


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_plain_1d(grid):
    grid_w, grid_h = grid
    _, stacks = plain_layout(labelled_views(1 + grid_w * grid_h), grid, NUM_CROPS, "1d")
    width = P * grid_w
    expected = []
    for k in range(grid_w * grid_h):
        flat_indices = range(k, P * P * grid_w * grid_h, grid_w * grid_h)
        expected.append([tile_token(grid, t // width, t % width, first_view=1) for t in flat_indices])
    expected += [[PAD] * (P * P)] * (NUM_CROPS - grid_w * grid_h)
    torch.testing.assert_close(stacks, torch.tensor(expected, dtype=torch.float), rtol=0, atol=0)


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_plain_grid(grid):
    grid_w, grid_h = grid
    _, stacks = plain_layout(labelled_views(1 + grid_w * grid_h), grid, NUM_CROPS, "grid")
    expected = [[[2 + k, r, c] for r in range(P) for c in range(P)] for k in range(grid_w * grid_h)]
    expected += [[PAD] * (P * P)] * (NUM_CROPS - grid_w * grid_h)
    torch.testing.assert_close(stacks, torch.tensor(expected, dtype=torch.float), rtol=0, atol=0)


def test_plain_more_crops_than_grid_gets_zero_stacks():
    _, stacks = plain_layout(labelled_views(3), (2, 1), num_crops=6)
    assert stacks.shape == (6, P * P, 3)
    assert stacks[2:].abs().sum() == 0 and stacks[:2].abs().sum() > 0


def hd_expected_layout(grid, view_token):
    """Hand-built HD layout: `view_token(v, r, c)` for the base view, then the grid rows, each closed by NEWLINE."""
    grid_w, grid_h = grid
    rows = [view_token(0, r, c) for r in range(P) for c in range(P)]
    for big_row in range(P * grid_h):
        for big_col in range(P * grid_w):
            view = 1 + (big_row // P) * grid_w + big_col // P
            rows.append(view_token(view, big_row % P, big_col % P))
        rows.append(NEWLINE.tolist())
    return rows


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_hd_layout(grid):
    grid_w, grid_h = grid
    s = 2  # isqrt(4)
    sequence_views = 1 + grid_w * grid_h
    total_views = num_views(grid, NUM_CROPS, hd_layout=True)
    assert total_views == sequence_views * (1 + s * s)
    sequence, stacks = hd_layout(labelled_views(total_views), grid, NUM_CROPS, NEWLINE)

    def sequence_token(view, r, c):
        return [view + 1, r, c]

    def stack_token(a, b):
        def token(view, r, c):
            # token (r, c) of the stack's view is (r*s + a, c*s + b) of that view's (P*s, P*s) sub-crop map
            map_row, map_col = r * s + a, c * s + b
            sub_crop = (map_row // P) * s + map_col // P
            return [sequence_views + view * s * s + sub_crop + 1, map_row % P, map_col % P]

        return token

    expected_stacks = [hd_expected_layout(grid, stack_token(a, b)) for a in range(s) for b in range(s)]
    length = num_image_tokens(grid, hd_layout=True, patches_per_side=P)
    assert sequence.shape == (length, 3) and stacks.shape == (s * s, length, 3)
    expected_sequence = torch.tensor(hd_expected_layout(grid, sequence_token), dtype=torch.float)
    torch.testing.assert_close(sequence, expected_sequence, rtol=0, atol=0)
    torch.testing.assert_close(stacks, torch.tensor(expected_stacks, dtype=torch.float), rtol=0, atol=0)


def test_unknown_sampling_raises():
    with pytest.raises(ValueError, match="3d"):
        plain_layout(labelled_views(3), (2, 1), NUM_CROPS, "3d")
