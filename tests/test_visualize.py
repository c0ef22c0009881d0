"""Pictures: panel pixels equal the frames after 8-bit scaling; the sample panel's title,
colour bars, frame labels and persistence row; GIFs enlarged and captioned; the lead-time
figure's labels and persistence lines."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stpdist.visualize import GAP, sample_figure, save_gif, save_panel, sequence_panel


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


def test_persistence_on_the_raw_per_frame_panel_is_the_pixel_count_times_its_mse():
    """An unclamped model (raw MSE 4× the clamped one): persistence on the `mse_frame_raw`
    panel was scaled by mse_frame_raw / mse (clamped), 4× too high; it is persistence MSE
    × C·H·W (64 pixels here) on both per-frame panels."""
    from stpdist.visualize import lead_time_series

    results = {}
    for t in (1, 2):
        clamped, raw, held = 0.01 * t, 0.04 * t, 0.02 * t
        results.update({f"val/mse/t{t:02d}": clamped, f"val/mse_raw/t{t:02d}": raw,
                        f"val/mse_frame/t{t:02d}": 64 * clamped,
                        f"val/mse_frame_raw/t{t:02d}": 64 * raw,
                        f"val/persistence_mse/t{t:02d}": held})  # fmt: skip
    _, baseline = lead_time_series(results)
    expected = [(1, pytest.approx(64 * 0.02)), (2, pytest.approx(64 * 0.04))]
    assert baseline["val/mse_frame"] == expected
    assert baseline["val/mse_frame_raw"] == expected
    # without `mse_raw` (its panel then drawn), the count from the clamped pair (a diff
    # review: the raw twin alone left the drawn panel without its line)
    per_lead, baseline = lead_time_series(
        {k: v for k, v in results.items() if "/mse_raw/" not in k}
    )
    assert "val/mse_frame_raw" in per_lead and baseline["val/mse_frame_raw"] == expected


def test_lead_time_figure_labels_every_panel_and_draws_persistence_where_it_exists(tmp_path):
    """Each panel has a y-axis label; the figure a title; persistence's line is on every
    panel it follows from (MSE, per-frame MSE, RMSE), not on those it does not (SSIM). A
    per-frame sum beside its per-pixel mean (the same curve × H·W) is no panel of its own."""
    from stpdist.visualize import DPI, lead_time_figure, lead_time_series, plot_lead_times

    results = {}
    for t in (1, 2, 3):
        results.update({f"val/mse/t{t:02d}": 0.01 * t, f"val/mse_frame/t{t:02d}": 0.01 * t * 64})
        results.update({f"val/rmse/t{t:02d}": (0.01 * t) ** 0.5, f"val/ssim/t{t:02d}": 1 - t / 10})
        results[f"val/persistence_mse/t{t:02d}"] = 0.04 * t
    fig = lead_time_figure(results, title="validation at step 8")
    assert fig._suptitle.get_text() == "validation at step 8"
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert sorted(panels) == ["val/mse", "val/rmse", "val/ssim"]
    assert all(ax.get_ylabel() for ax in panels.values())
    dashed = {
        name: [line for line in ax.get_lines() if line.get_label() == "persistence"]
        for name, ax in panels.items()
    }
    assert {name for name, lines in dashed.items() if lines} == {"val/mse", "val/rmse"}
    _, baseline = lead_time_series(results)  # the series is there (the table has it)
    np.testing.assert_allclose([v for _, v in baseline["val/mse_frame"]], [2.56, 5.12, 7.68])
    alone = {k: v for k, v in results.items() if not k.startswith("val/mse/")}
    assert "val/mse_frame" in [ax.get_title() for ax in lead_time_figure(alone).axes]
    np.testing.assert_allclose(dashed["val/rmse"][0].get_ydata(), np.sqrt([0.04, 0.08, 0.12]))
    path = plot_lead_times(results, tmp_path / "lead.png")
    default = lead_time_figure(results)
    assert default._suptitle.get_text()  # a title without being asked
    assert Image.open(path).size == tuple(round(v) for v in default.get_size_inches() * DPI)


def test_lead_time_panels_of_thresholds_in_number_order_under_a_title_clear_of_them():
    """A radar user's review: 57 panels ordered as text (csi@133 before csi@16), and the
    figure's title, placed at a share of a tall figure's height, over the first row's titles."""
    from stpdist.visualize import lead_time_figure

    results = {}
    levels = (16, 74, 133, 160, 181, 219, 230, 240, 241, 242, 243, 244, 245, 246, 247)
    for level in levels:  # 60 panels, 15 rows: a tall figure
        for score in ("csi", "pod", "far", "hss"):
            results.update({f"test/{score}@{level}/t{t:02d}": 0.1 * t for t in (1, 2)})
    fig = lead_time_figure(results)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:6] == [f"test/csi@{level}" for level in (16, 74, 133, 160, 181, 219)]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    panel_tops = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes if ax.get_title())
    assert title_bottom > panel_tops, (title_bottom, panel_tops)


# ------------------------------------------------- colour ranges per channel, every channel drawn
def _physical_sample(seed=0, t_in=4, t_out=3, h=8, w=16):
    """Inputs, truth and prediction of 2 channels in physical units (value scale 1):
    c0 ≈ 5e4 ± 1e3 (geopotential, m² s⁻²), c1 ≈ 280 ± 5 (temperature, K); wide frames."""
    rng = np.random.default_rng(seed)
    centre = np.array([5e4, 280.0], np.float32)[None, :, None, None]
    spread = np.array([1e3, 5.0], np.float32)[None, :, None, None]

    def frames(t):
        return centre + spread * rng.uniform(-1, 1, (t, 2, h, w)).astype(np.float32)

    inputs, truth = frames(t_in), frames(t_out)
    prediction = truth + 0.3 * spread * rng.standard_normal(truth.shape).astype(np.float32)
    return inputs, truth, prediction


def _row_axes(fig):
    """The panel's row axes by label (not the colour bars)."""
    return {ax.get_ylabel(): ax for ax in fig.axes if not hasattr(ax, "_colorbar")}


def _crop(png, ax):
    """The pixels of `ax` in a PNG saved at the figure's DPI (display pixels = PNG pixels),
    one pixel in from its edges."""
    box = ax.get_window_extent()
    height = png.shape[0]
    return png[
        height - int(box.y1) + 1 : height - int(box.y0) - 1, int(box.x0) + 1 : int(box.x1) - 1
    ]


def _distinct(pixels):
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


def _pixel(png, ax, x, y):
    """The PNG's RGB at data coordinates (x, y) of `ax` (a frame pixel's centre)."""
    px, py = ax.transData.transform((x, y))
    return tuple(int(v) for v in png[png.shape[0] - 1 - int(py), int(px)])


def test_physical_units_panel_gives_every_channel_its_own_colour_range(tmp_path):
    """Weather-like data (z ~5e4, t ~280): each channel's block of rows has its own value
    range (the channel's min…max over input, truth and prediction) and |error| range, with
    a colour bar each; no row of either channel is drawn flat; a channel's MSE is its own."""
    from stpdist.visualize import DPI, sample_figure

    inputs, truth, pred = _physical_sample()
    fig = sample_figure(inputs, truth, pred, "coolwarm", key="w2000")
    bars = [ax.get_ylabel() for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert bars == ["value c0", "|error| c0", "value c1", "|error| c1"]
    rows = _row_axes(fig)
    for c in (0, 1):
        values = np.concatenate([inputs[:, c], truth[:, c], pred[:, c]])
        clim = rows[f"truth c{c}"].get_images()[0].get_clim()
        np.testing.assert_allclose(clim, (values.min(), values.max()), rtol=1e-6)
        errors = np.concatenate([np.abs(truth - pred)[:, c], np.abs(truth - inputs[-1:])[:, c]])
        clim = rows[f"|error| c{c}\nprediction"].get_images()[0].get_clim()
        np.testing.assert_allclose(clim, (0, errors.max()), rtol=1e-6)
        mse = float(np.mean((pred[:, c].astype(np.float64) - truth[:, c]) ** 2))
        assert f"prediction c{c}\nMSE {mse:.4g}" in rows
    path = tmp_path / "w2000.png"
    fig.savefig(path, dpi=DPI)
    png = np.asarray(Image.open(path).convert("RGB"))
    assert len(rows) == 12  # input, truth, prediction, persistence, 2 × |error|; 2 channels
    for label, ax in rows.items():
        assert _distinct(_crop(png, ax)) >= 30, f"row {label!r} is drawn flat"


def test_panel_row_and_bar_labels_stay_inside_the_figure_and_apart():
    """Wide frames (row height 0.4 in), 2 channels, 5-digit MSEs: no row label reaches
    past the figure's left edge or into its frames, no two labels overlap, and every
    colour bar's label lies inside the figure (also for inspect's one-row blocks)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from stpdist.visualize import sample_figure

    inputs, truth, pred = _physical_sample(h=16, w=32)
    for fig in (sample_figure(inputs, truth, pred, key="k"), sample_figure(inputs, None, None)):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        boxes = []
        for label, ax in _row_axes(fig).items():
            box = ax.yaxis.label.get_window_extent(renderer)
            assert box.x0 >= 0, f"row label {label!r} cut at the left edge"
            assert box.x1 <= ax.get_window_extent(renderer).x0, f"{label!r} over the frames"
            boxes.append((box.y0, box.y1, label))
        boxes.sort()
        for (_, top, below), (bottom, _, above) in zip(boxes, boxes[1:]):
            assert top <= bottom, f"row labels {below!r} and {above!r} overlap"
        width, height = canvas.get_width_height()
        for ax in (ax for ax in fig.axes if hasattr(ax, "_colorbar")):
            box = ax.yaxis.label.get_window_extent(renderer)
            assert box.y0 >= 0 and box.y1 <= height and box.x1 <= width, ax.get_ylabel()


def _strips(image, x):
    """(top, bottom) of each run of rows that are not white in column x of an image: the
    stacked strips of a GIF (viridis is never white; captions stay left of x)."""
    coloured = list((image[:, x] != 255).any(axis=-1)) + [False]
    runs, start = [], None
    for y, on in enumerate(coloured):
        if on and start is None:
            start = y
        elif not on and start is not None:
            runs.append((start, y))
            start = None
    return runs


def test_gif_draws_one_strip_per_channel_each_on_its_own_range(tmp_path):
    """A 2-channel physical-unit GIF (TaxiBJ-like colormap) has a strip per channel, truth
    and prediction side by side, each channel on the range of its truth and prediction
    frames together (viridis of (x − min) / (max − min)), none flat, in every GIF frame."""
    import matplotlib

    from stpdist.visualize import GIF_MIN_SIZE

    _, truth, pred = _physical_sample()
    path = save_gif(tmp_path / "w.gif", truth, pred, colormap="viridis", key="w2000")
    zoom = GIF_MIN_SIZE // 8  # 8×16 frames drawn at 256×512
    big_w = 16 * zoom
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        for t in range(3):
            gif.seek(t)
            image = np.asarray(gif.convert("RGB")).astype(int)
            strips = _strips(image, big_w - 3)
            assert [bottom - top for top, bottom in strips] == [GIF_MIN_SIZE] * 2
            for c, (top, bottom) in enumerate(strips):
                both = np.concatenate([truth[:, c], pred[:, c]])
                lo, hi = both.min(), both.max()
                for half, frames in enumerate((truth, pred)):
                    shown = image[top:bottom, half * (big_w + 8) : half * (big_w + 8) + big_w]
                    assert _distinct(shown) >= 30, f"channel {c} drawn flat at lead {t + 1}"
                    rgb = matplotlib.colormaps["viridis"]((frames[t, c] - lo) / (hi - lo))
                    expected = np.round(rgb[..., :3] * 255).repeat(zoom, 0).repeat(zoom, 1)
                    assert np.abs(shown - expected).max() <= 8  # GIF palette rounding


def test_gif_of_three_channels_is_rgb_without_colormap_and_a_strip_each_with_one(tmp_path):
    from stpdist.visualize import GIF_MIN_SIZE

    rng = np.random.default_rng(4)
    truth, pred = rng.random((2, 3, 8, 8)), rng.random((2, 3, 8, 8))
    for colormap, count in ((None, 1), ("viridis", 3)):
        path = save_gif(tmp_path / f"{colormap}.gif", truth, pred, colormap=colormap)
        with Image.open(path) as gif:
            image = np.asarray(gif.convert("RGB")).astype(int)
        strips = _strips(image, GIF_MIN_SIZE - 3)
        assert [bottom - top for top, bottom in strips] == [GIF_MIN_SIZE] * count, colormap
    zoom = GIF_MIN_SIZE // 8
    top, bottom = strips[2]  # channel 2 under viridis: its own strip, values in [0, 1]
    import matplotlib

    expected = matplotlib.colormaps["viridis"](truth[0, 2])[..., :3]
    expected = np.round(expected * 255).repeat(zoom, 0).repeat(zoom, 1)
    assert np.abs(image[top:bottom, :GIF_MIN_SIZE] - expected).max() <= 8


def test_sequence_panel_scales_each_channel_by_its_own_range():
    """Physical units: pixel = (x − min) / (max − min) × 255 with each channel's min and
    max over inputs, truth and prediction; |error| rows on 0 … the channel's largest."""
    inputs, truth, pred = _physical_sample(w=8)
    image = sequence_panel(inputs, truth, pred).astype(int)

    def cell(row, col):
        top, left = row * (8 + GAP), col * (8 + GAP)
        return image[top : top + 8, left : left + 8, 0]

    for c in (0, 1):
        values = np.concatenate([inputs[:, c], truth[:, c], pred[:, c]]).astype(np.float64)
        lo, hi = values.min(), values.max()
        expected = np.round((truth[1, c] - lo) / (hi - lo) * 255)
        assert np.abs(cell(2 + c, 1) - expected).max() <= 1  # rows: input c0, c1, truth c0, …
        error = np.abs(truth[:, c] - pred[:, c])
        expected = np.round(error[2] / error.max() * 255)
        assert np.abs(cell(6 + c, 2) - expected).max() <= 1
        assert len(np.unique(cell(4 + c, 0))) >= 30  # prediction rows are not flat


# the old pictures of data in [0, 1] (before per-channel ranges): frame values and the
# panel's pixels for them, gray and viridis, read from PNGs the earlier code wrote
LEVELS = [0.0, 0.1, 0.25, 0.4, 0.5, 0.75, 0.9, 1.0]
OLD_GRAY = [(0, 0, 0), (25, 25, 25), (64, 64, 64), (102, 102, 102), (128, 128, 128),
            (192, 192, 192), (230, 230, 230), (255, 255, 255)]  # fmt: skip
OLD_VIRIDIS = [(68, 1, 84), (72, 35, 116), (58, 82, 139), (41, 120, 142), (32, 144, 140),
               (94, 201, 97), (189, 222, 38), (253, 231, 36)]  # fmt: skip


def test_unit_range_channel_keeps_the_fixed_range_beside_a_physical_one(tmp_path):
    """Data in [0, 1] are drawn on the fixed (0, 1) range, pixel for pixel as before (the
    old pixels of a fixed 1-channel sample), and so is a [0, 1] channel beside a channel
    of kelvin (c1 ≈ 280): in the panel, the GIF and `sequence_panel`; c1 is not flat."""
    from stpdist.visualize import DPI, GIF_MIN_SIZE, sample_figure

    frame = np.resize(np.array(LEVELS, np.float32), (8, 8))  # row r: LEVELS rolled by r
    truth = np.stack([np.roll(frame, t, axis=1) for t in range(3)])[:, None]
    inputs = np.stack([np.roll(frame, -t, axis=0) for t in range(2)])[:, None]
    pred = truth[:, :, ::-1].copy()
    kelvin = 280 + 5 * np.random.default_rng(6).uniform(-1, 1, (5, 1, 8, 8)).astype(np.float32)
    two = [np.concatenate([x, kelvin[: len(x)]], axis=1) for x in (inputs, truth, pred)]
    for colormap, old in ((None, OLD_GRAY), ("viridis", OLD_VIRIDIS)):
        for sample, label in (((inputs, truth, pred), "truth"), (two, "truth c0")):
            fig = sample_figure(*sample, colormap)
            path = tmp_path / f"{colormap}-{label}.png"
            fig.savefig(path, dpi=DPI)
            png = np.asarray(Image.open(path).convert("RGB"))
            ax = _row_axes(fig)[label]
            assert [_pixel(png, ax, x, 0) for x in range(8)] == old, (colormap, label)
        assert _distinct(_crop(png, _row_axes(fig)["truth c1"])) >= 30

    # sequence_panel: channel 0's rows as the 1-channel panel's, channel 1's its own range
    alone, both = sequence_panel(inputs, truth, pred), sequence_panel(*two)
    for group in range(4):  # input, truth, prediction, |error|: c0 is row 2 × group
        top = 2 * group * (8 + GAP)
        np.testing.assert_array_equal(
            both[top : top + 8], alone[group * (8 + GAP) : group * (8 + GAP) + 8]
        )
    assert len(np.unique(both[8 + GAP : 16 + GAP, :8, 0])) >= 30

    # GIF: channel 0's strip as the 1-channel GIF, channel 1 a strip of its own
    gifs = [save_gif(tmp_path / f"{n}.gif", t, p, colormap="viridis") for n, t, p in
            (("alone", truth, pred), ("both", two[1], two[2]))]  # fmt: skip
    with Image.open(gifs[0]) as a, Image.open(gifs[1]) as b:
        alone, both = (np.asarray(g.convert("RGB")).astype(int) for g in (a, b))
    strips = _strips(both, GIF_MIN_SIZE - 3)
    assert len(strips) == 2
    (top, bottom), (alone_top, alone_bottom) = strips[0], _strips(alone, GIF_MIN_SIZE - 3)[0]
    np.testing.assert_array_equal(both[top:bottom], alone[alone_top:alone_bottom])
    assert _distinct(both[strips[1][0] : strips[1][1], :GIF_MIN_SIZE]) >= 30


# ------------------------------------------------- channels named by the dataset's variables
def test_channel_names_label_panel_rows_colour_bars_and_gif_strips():
    """Named channels (the index's variables) replace c0, c1 in a panel's row labels, its
    colour bars and a GIF's strips; without names they stay c0, c1."""
    from stpdist.visualize import _gif_strips, _panel_blocks, sample_figure

    inputs, truth, pred = _physical_sample()
    blocks = _panel_blocks(inputs, truth, pred, None, ["z500", "t2m"])
    assert [suffix for suffix, _ in blocks] == [" z500", " t2m"]
    labels = [row.label.split("\n")[0] for row in blocks[1][1]]
    assert labels == ["input t2m", "truth t2m", "prediction t2m", "persistence t2m",
                      "|error| t2m", "|error| t2m"]  # fmt: skip
    mse = float(np.mean((pred[:, 1].astype(np.float64) - truth[:, 1]) ** 2))
    assert blocks[1][1][2].label == f"prediction t2m\nMSE {mse:.4g}"
    assert [s for s, _ in _panel_blocks(inputs, truth, pred, None)] == [" c0", " c1"]

    strips = _gif_strips(truth, pred, "viridis", ["z500", "t2m"])
    assert [[name for name, _ in strip] for strip in strips] == [
        ["truth z500", "prediction z500"], ["truth t2m", "prediction t2m"]
    ]  # fmt: skip
    forecast = _gif_strips(None, pred, None, ["z500", "t2m"])
    assert [[name for name, _ in strip] for strip in forecast] == [["prediction z500"],
                                                                   ["prediction t2m"]]  # fmt: skip

    fig = sample_figure(inputs, None, pred, "coolwarm", key="w", channel_names=["z500", "t2m"])
    rows, bars = _labels(fig)
    assert list(rows) == ["input z500", "prediction z500", "input t2m", "prediction t2m"]
    assert bars == ["value z500", "value t2m"]


def test_long_channel_names_widen_the_panel_and_nothing_is_cut_or_overlaps():
    """A long name ("geopotential_500hPa") widens the left margin to fit its row labels,
    and the colour bars' labels, longer than their bars, are spaced apart (training
    panels, and `inspect`'s one row a channel): every label inside the figure, none over
    another or over the frames; the GIF's strip labels go on two lines, cut to fit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from stpdist.visualize import GIF_MIN_SIZE, _font, _gif_labels, gif_frames, sample_figure

    inputs, truth, pred = _physical_sample(w=8)
    names = ["geopotential_500hPa", "t2m"]
    short = sample_figure(inputs, truth, pred, channel_names=["z", "t2m"])
    long = sample_figure(inputs, truth, pred, channel_names=names)
    assert long.axes[0].get_window_extent().x0 > short.axes[0].get_window_extent().x0 + 50
    for fig in (long, sample_figure(inputs, None, None, channel_names=names)):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        width, height = canvas.get_width_height()
        rows = [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]
        for ax in rows:
            box = ax.yaxis.label.get_window_extent(renderer)
            assert 0 <= box.x0 and box.x1 <= ax.get_window_extent(renderer).x0, ax.get_ylabel()
        bars = [ax.yaxis.label.get_window_extent(renderer)
                for ax in fig.axes if hasattr(ax, "_colorbar")]  # fmt: skip
        bars.sort(key=lambda box: -box.y1)  # top to bottom
        assert bars[0].y1 <= height - 50  # below the title (the top 0.5 in)
        assert bars[-1].y0 >= 0 and max(b.x1 for b in bars) <= width
        for upper, lower in zip(bars, bars[1:]):
            assert lower.y1 <= upper.y0, "colour-bar labels overlap"

    font = _font(16)
    labels, lines = _gif_labels(["truth z500", "prediction t2m"], 12, font, 248)
    assert lines == 1 and labels["prediction t2m"][11] == ["prediction t2m  (lead +12)"]
    labels, lines = _gif_labels(["prediction " + names[0] * 2], 3, font, 248)
    assert lines == 2 and labels["prediction " + names[0] * 2][0][1] == "(lead +1)"
    cut = labels["prediction " + names[0] * 2][0][0]
    assert cut.startswith("prediction geopot") and cut.endswith("…")
    assert font.getlength(cut) <= 248
    one, two = (gif_frames(truth[:, :, :, :8], pred[:, :, :, :8], channel_names=n)[0]
                for n in (["z", "t2m"], names))  # fmt: skip
    assert one.size[0] == two.size[0] == 2 * GIF_MIN_SIZE + 8
    assert two.size[1] == one.size[1] + 2 * 22  # a second label line over each strip


def test_wrong_number_of_channel_names_is_refused_naming_both():
    import pytest

    from stpdist.visualize import gif_frames, sample_figure, save_samples

    frames = np.zeros((2, 2, 4, 4), np.float32)
    for draw in (lambda: sample_figure(frames, frames, frames, channel_names=["z500"]),
                 lambda: gif_frames(frames, frames, channel_names=["z500", "t2m", "u10"])):  # fmt: skip
        with pytest.raises(ValueError, match=r"channel_names has \d names .* of 2 channels"):
            draw()
    with pytest.raises(ValueError, match="has 2 names"):  # RGB and 1 channel: checked too
        sample_figure(frames[:, :1], None, None, channel_names=["a", "b"])
    with pytest.raises(ValueError, match="for data of 2 channels"):
        save_samples("unused", [("k", frames, frames, frames)], channel_names=[])


def test_one_channel_and_rgb_pictures_are_unchanged_by_a_name(tmp_path):
    """One picture per frame (1 channel, or 3 as RGB): no channel suffix, so a name changes
    no pixel of the panel or the GIF; `save_samples` hands its names to both."""
    from stpdist.visualize import save_samples

    rng = np.random.default_rng(7)
    for c, names in ((1, ["x"]), (3, ["r", "g", "b"])):
        inputs, truth, pred = (rng.random((t, c, 6, 6)) for t in (2, 2, 2))
        plain = save_panel(tmp_path / f"{c}.png", inputs, truth, pred, key="k")
        named = save_panel(tmp_path / f"{c}-n.png", inputs, truth, pred, key="k",
                           channel_names=names)  # fmt: skip
        assert plain.read_bytes() == named.read_bytes()
        plain = save_gif(tmp_path / f"{c}.gif", truth, pred, key="k", min_size=24)
        named = save_gif(tmp_path / f"{c}-n.gif", truth, pred, key="k", min_size=24,
                         channel_names=names)  # fmt: skip
        assert plain.read_bytes() == named.read_bytes()

    # two channels: save_samples' pictures are those drawn with the names (not "c0", "c1")
    inputs, truth, pred = (rng.random((t, 2, 6, 6)) for t in (2, 2, 2))
    names = ["z500", "t2m"]
    ((_, png, gif),) = save_samples(tmp_path / "s", [("k", inputs, truth, pred)],
                                    channel_names=names)  # fmt: skip
    panel = save_panel(tmp_path / "p.png", inputs, truth, pred, key="k", channel_names=names)
    assert png.read_bytes() == panel.read_bytes()
    assert gif.read_bytes() == save_gif(tmp_path / "p.gif", truth, pred, key="k",
                                        channel_names=names).read_bytes()  # fmt: skip


@pytest.mark.parametrize("frames", [1, 2, 4])
def test_the_title_is_whole_on_the_narrow_panels_of_short_sequences(frames):
    """The title (key, step, the MSE next to persistence's) was cut at both edges below
    about 10 frames: 'test_0000123' lost its start and the persistence value its end."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from stpdist.cli import stored_frames_figure

    x = np.random.default_rng(0).random((frames, 2, 16, 16), dtype=np.float32)
    long_key = "station_" + "x" * 40 + "_2019-01-01T00-00_" + "y" * 40  # shortened in its middle
    for fig in (
        sample_figure(x, x, x * 0.9, key="test_0000123$x$", step=12345678),
        sample_figure(x, x, x * 0.9, key=long_key, step=100),
        stored_frames_figure(x, "test_0000123"),
    ):
        title = fig._suptitle
        box = title.get_window_extent(FigureCanvasAgg(fig).get_renderer())
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (frames, title.get_text(), box)
        assert title.get_fontsize() >= 8
    assert "test_0000123$x$" in sample_figure(x, x, x, key="test_0000123$x$")._suptitle.get_text()


def test_characters_the_font_lacks_are_said_once_not_as_a_warning_per_glyph(
    tmp_path, caplog, recwarn, monkeypatch
):
    """A review's `inspect` of keys in CJK script printed matplotlib's warning per missing
    glyph, each with a source line of stpdist's; one line a process says it now."""
    import logging

    from stpdist import visualize

    monkeypatch.setattr(visualize, "_UNDRAWN_GLYPHS_SAID", [False])
    frames = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    staging = tmp_path / ".pred.staging-host-123"  # drawn aside (a dataops review: named so)
    staging.mkdir()
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        for name in ("日本語", "キー"):
            visualize.save_panel(staging / f"{name}.png", frames, frames, frames)
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    said = [r for r in caplog.records if "drawn as boxes" in r.getMessage()]
    assert len(said) == 1 and (staging / "キー.png").is_file()
    assert said[0].getMessage().startswith(f"{tmp_path / 'pred' / '日本語.png'}: ")
