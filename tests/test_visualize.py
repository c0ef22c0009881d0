"""Pictures: panel pixels equal the frames after 8-bit scaling; GIF frame counts; channels."""

from __future__ import annotations

import numpy as np
from PIL import Image

from stpdist.visualize import GAP, save_gif, save_panel


def test_panel_pixels_match_frames(tmp_path):
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, (3, 1, 6, 5)) / 255
    truth = rng.integers(0, 256, (4, 1, 6, 5)) / 255
    pred = rng.integers(0, 256, (4, 1, 6, 5)) / 255
    path = save_panel(tmp_path / "p.png", inputs, truth, pred)
    image = np.asarray(Image.open(path))
    assert image.shape == (4 * 6 + 3 * GAP, 4 * 5 + 3 * GAP, 3)

    def cell(row, col):
        top, left = row * (6 + GAP), col * (5 + GAP)
        return image[top : top + 6, left : left + 5]

    for col in range(3):
        np.testing.assert_array_equal(cell(0, col)[..., 0], np.round(inputs[col, 0] * 255))
    np.testing.assert_array_equal(cell(1, 2)[..., 1], np.round(truth[2, 0] * 255))
    np.testing.assert_array_equal(cell(2, 3)[..., 2], np.round(pred[3, 0] * 255))
    np.testing.assert_array_equal(
        cell(3, 0)[..., 0], np.round(np.abs(truth[0, 0] - pred[0, 0]) * 255)
    )
    assert (cell(0, 3) == 255).all()  # no fourth input frame: left white


def test_two_channels_get_a_row_each_and_colormap(tmp_path):
    frames = np.random.default_rng(1).random((2, 2, 4, 4))
    path = save_panel(tmp_path / "p.png", frames, frames, frames, colormap="viridis")
    image = np.asarray(Image.open(path))
    assert image.shape[0] == 8 * 4 + 7 * GAP  # 4 groups × 2 channels
    top = image[:4, :4]
    assert not (top[..., 0] == top[..., 1]).all()  # coloured, not gray


def test_gif_has_one_frame_per_step(tmp_path):
    truth = np.random.default_rng(2).random((5, 1, 8, 8))
    path = save_gif(tmp_path / "a.gif", truth, truth)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (2 * 8 + GAP, 8)
