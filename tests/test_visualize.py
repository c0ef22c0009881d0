"""Pictures: panel pixels equal the frames after 8-bit scaling; the sample panel's title,
colour bars, frame labels and persistence row; GIFs enlarged and captioned; the lead-time
figure's labels and persistence lines."""

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


def test_gif_is_enlarged_and_captioned_one_frame_per_lead_time(tmp_path):
    from stpdist.visualize import GIF_MIN_SIZE

    rng = np.random.default_rng(2)
    truth, pred = rng.random((5, 1, 8, 8)), rng.random((5, 1, 8, 8))
    path = save_gif(tmp_path / "a.gif", truth, pred, key="val_0000003")
    zoom = GIF_MIN_SIZE // 8  # 8-pixel frames drawn at 256, nearest neighbour
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        width, height = gif.size
        assert width >= 2 * GIF_MIN_SIZE and height >= GIF_MIN_SIZE + 30  # + a caption
        gif.seek(2)
        image = np.asarray(gif.convert("RGB")).astype(int)
    caption = image[: height - GIF_MIN_SIZE]
    assert (caption < 100).any()  # text drawn above the frames
    left = image[height - GIF_MIN_SIZE :, :GIF_MIN_SIZE, 0]  # truth at lead +3
    expected = np.round(truth[2, 0] * 255).repeat(zoom, 0).repeat(zoom, 1)
    assert np.abs(left - expected).max() <= 8  # GIF palette rounding
    forecast = save_gif(tmp_path / "f.gif", None, pred)  # no truth: the prediction alone
    with Image.open(forecast) as gif:
        assert gif.n_frames == 5 and GIF_MIN_SIZE <= gif.size[0] < 2 * GIF_MIN_SIZE


def _labels(fig):
    """Row axes (those with a row label) by label, and the colour bars' labels."""
    rows = {ax.get_ylabel(): ax for ax in fig.axes if not hasattr(ax, "_colorbar")}
    bars = [ax.get_ylabel() for ax in fig.axes if hasattr(ax, "_colorbar")]
    return rows, bars


def test_sample_figure_has_title_colour_bars_persistence_and_lead_labels(tmp_path):
    """The issue's checklist, read from the figure's artists before it is saved: a title
    with key, step and the sample's MSE; a colour bar for values and one for |error|;
    input frames −3…0 apart from lead times +1…+3; a persistence row (the last input
    frame held) with its own MSE; then the PNG at the figure's size."""
    from stpdist.visualize import DPI, sample_figure

    rng = np.random.default_rng(3)
    inputs, truth = rng.random((4, 1, 8, 8)), rng.random((3, 1, 8, 8))
    pred = rng.random((3, 1, 8, 8))
    fig = sample_figure(inputs, truth, pred, key="val_0000007", step=64)
    mse = float(np.mean((truth - pred) ** 2))
    persistence_mse = float(np.mean((truth - inputs[-1:]) ** 2))
    title = fig._suptitle.get_text()
    assert "val_0000007" in title and "step 64" in title and f"MSE {mse:.4g}" in title
    rows, bars = _labels(fig)
    assert bars == ["value", "|error|"]
    assert list(rows)[:2] == ["input", "truth"]
    ticks = {name: [t.get_text() for t in rows[name].get_xticklabels()] for name in rows}
    assert ticks["input"] == ["−3", "−2", "−1", "0"] and ticks["truth"] == ["+1", "+2", "+3"]
    (persistence,) = [name for name in rows if name.startswith("persistence")]
    assert f"MSE {persistence_mse:.4g}" in persistence
    (prediction,) = [name for name in rows if name.startswith("prediction")]
    assert f"MSE {mse:.4g}" in prediction
    held = np.asarray(rows[persistence].get_images()[0].get_array())
    gap = (held.shape[1] - 3 * 8) // 2
    for t in range(3):  # every lead time shows the last input frame
        cell = held[:, t * (8 + gap) : t * (8 + gap) + 8]
        np.testing.assert_allclose(cell, inputs[-1, 0], atol=1e-6)
    assert any(name.startswith("|error|") for name in rows)

    path = save_panel(tmp_path / "p.png", inputs, truth, pred, key="val_0000007", step=64)
    width, height = (round(v) for v in fig.get_size_inches() * DPI)
    assert Image.open(path).size == (width, height)
    assert width >= 600 and height >= 600  # 80 px a frame, 12-point labels: wandb-readable

    # a forecast (no truth): input and prediction rows, no persistence, no error bar
    rows, bars = _labels(sample_figure(inputs, None, pred, key="f"))
    assert list(rows) == ["input", "prediction"] and bars == ["value"]


def test_lead_time_plot_draws_persistence_beside_the_model(tmp_path):
    from stpdist.visualize import lead_time_series, plot_lead_times

    results = {f"val/mse/t{t:02d}": 0.01 * t for t in (1, 2, 3)}
    results.update({f"val/persistence_mse/t{t:02d}": 0.02 * t for t in (1, 2, 3)})
    per_lead, baseline = lead_time_series(results)
    assert list(per_lead) == ["val/mse"]  # persistence is no panel of its own…
    assert baseline == {"val/mse": [(1, 0.02), (2, 0.04), (3, 0.06)]}  # …but drawn on mse's
    assert plot_lead_times(results, tmp_path / "lead.png").is_file()


def test_lead_time_figure_labels_every_panel_and_draws_persistence_where_it_exists(tmp_path):
    """Each panel has a y-axis label; the figure a title; persistence's line is on every
    panel it follows from (MSE, per-frame MSE, RMSE), not on those it does not (SSIM)."""
    from stpdist.visualize import DPI, lead_time_figure, plot_lead_times

    results = {}
    for t in (1, 2, 3):
        results.update({f"val/mse/t{t:02d}": 0.01 * t, f"val/mse_frame/t{t:02d}": 0.01 * t * 64})
        results.update({f"val/rmse/t{t:02d}": (0.01 * t) ** 0.5, f"val/ssim/t{t:02d}": 1 - t / 10})
        results[f"val/persistence_mse/t{t:02d}"] = 0.04 * t
    fig = lead_time_figure(results, title="validation at step 8")
    assert fig._suptitle.get_text() == "validation at step 8"
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert sorted(panels) == ["val/mse", "val/mse_frame", "val/rmse", "val/ssim"]
    assert all(ax.get_ylabel() for ax in panels.values())
    dashed = {
        name: [line for line in ax.get_lines() if line.get_label() == "persistence"]
        for name, ax in panels.items()
    }
    assert {name for name, lines in dashed.items() if lines} == {
        "val/mse",
        "val/mse_frame",
        "val/rmse",
    }
    np.testing.assert_allclose(dashed["val/mse_frame"][0].get_ydata(), [2.56, 5.12, 7.68])
    np.testing.assert_allclose(dashed["val/rmse"][0].get_ydata(), np.sqrt([0.04, 0.08, 0.12]))
    path = plot_lead_times(results, tmp_path / "lead.png")
    default = lead_time_figure(results)
    assert default._suptitle.get_text()  # a title without being asked
    assert Image.open(path).size == tuple(round(v) for v in default.get_size_inches() * DPI)
