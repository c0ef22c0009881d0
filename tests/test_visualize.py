"""Pictures: panel pixels equal the frames after 8-bit scaling; GIF frame counts; channels."""

from __future__ import annotations

import numpy as np
from PIL import Image

from stpdist.visualize import GAP, save_gif, save_panel, sequence_panel


def test_panel_pixels_match_frames(tmp_path):
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, (3, 1, 6, 5)) / 255
    truth = rng.integers(0, 256, (4, 1, 6, 5)) / 255
    pred = rng.integers(0, 256, (4, 1, 6, 5)) / 255
    image = sequence_panel(inputs, truth, pred)
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
    image = sequence_panel(frames, frames, frames, colormap="viridis")
    assert image.shape[0] == 8 * 4 + 7 * GAP  # 4 groups × 2 channels
    top = image[:4, :4]
    assert not (top[..., 0] == top[..., 1]).all()  # coloured, not gray


def test_gif_has_one_frame_per_step(tmp_path):
    truth = np.random.default_rng(2).random((5, 1, 8, 8))
    path = save_gif(tmp_path / "a.gif", truth, truth)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (2 * 8 + GAP, 8)


def test_saved_panel_is_upscaled_labelled_and_has_a_colour_bar(tmp_path):
    frames = np.random.default_rng(3).random((4, 1, 8, 8))
    path = save_panel(tmp_path / "p.png", frames[:3], frames, frames, colormap="viridis")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    zoom = 8  # 8-pixel frames drawn at 64
    grid = sequence_panel(frames[:3], frames, frames, "viridis")
    big = grid.repeat(zoom, 0).repeat(zoom, 1)
    left, top = 84, 16
    np.testing.assert_array_equal(image[top : top + big.shape[0], left : left + big.shape[1]], big)
    assert (image[top:, :left] < 128).any()  # row labels drawn in the margin
    assert (image[:top, left:] < 128).any()  # column numbers
    bar = image[top : top + big.shape[0], left + big.shape[1] + 4 : left + big.shape[1] + 14]
    assert bar.shape[1] == 10 and np.abs(bar[0] - bar[-1]).max() > 100  # a colour ramp


def test_lead_time_plot_draws_persistence_beside_the_model(tmp_path):
    from stpdist.visualize import lead_time_series, plot_lead_times

    results = {f"val/mse/t{t:02d}": 0.01 * t for t in (1, 2, 3)}
    results.update({f"val/persistence_mse/t{t:02d}": 0.02 * t for t in (1, 2, 3)})
    per_lead, baseline = lead_time_series(results)
    assert list(per_lead) == ["val/mse"]  # persistence is no panel of its own…
    assert baseline == {"val/mse": [(1, 0.02), (2, 0.04), (3, 0.06)]}  # …but drawn on mse's
    assert plot_lead_times(results, tmp_path / "lead.png").is_file()
