"""`stpdist shard images` and `stpdist shard videos`: folders of image frames and video
files (written here with PIL and PyAV, in the layouts users have) converted to shards:
values (PNG and lossless video exact), keys, splits, channels, sizes, windows, and the
mistakes such folders hold refused, or said, naming the file."""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_convert_inputs import error_line

from stpdist.data.format import iter_shard, read_index

SIZE = 16


def _gray(seed: int, count: int, size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """T×H×W uint8 noise: any resampling or reordering shows."""
    return np.random.default_rng(seed).integers(0, 256, (count, *size), dtype=np.uint8)


def _colour(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def _tiff_16bit_rgb(path: Path, frame: np.ndarray) -> None:
    """An uncompressed 16-bit RGB TIFF of `frame` (H×W×3 uint16), one strip, written field
    by field (Pillow writes none; tifffile is no dependency)."""
    height, width, _ = frame.shape
    data = frame.astype("<u2").tobytes()
    bits_at = 8 + 2 + 12 * 10 + 4  # header, entry count, 10 entries, next-IFD offset
    entries = [  # (tag, type 3 SHORT / 4 LONG, count, value or offset)
        (256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, bits_at), (259, 3, 1, 1),
        (262, 3, 1, 2), (273, 4, 1, bits_at + 6), (277, 3, 1, 3), (278, 3, 1, height),
        (279, 4, 1, len(data)), (284, 3, 1, 1),
    ]  # fmt: skip
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, count, value in entries:
        packed = (
            struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        )
        out += struct.pack("<HHI", tag, kind, count) + packed
    path.write_bytes(out + struct.pack("<I3H", 0, 16, 16, 16) + data)


def _pngs(folder: Path, frames: np.ndarray, suffix: str = ".png", **save: object) -> None:
    """Frame i as `<i>.png` (1.png, 2.png, … 10.png: natural order is not text order)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i + 1}{suffix}", **save)


def _video(
    path: Path,
    frames_THWC: np.ndarray,
    codec: str = "ffv1",
    pix_fmt: str = "bgr0",
    rotation: int = 0,
    rate: int = 25,
) -> None:
    av = pytest.importorskip("av")
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV without {codec}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames_THWC.shape[1:3]
        stream.pix_fmt = pix_fmt
        if rotation:  # the display matrix a phone writes for portrait video
            stream.set_display_rotation(rotation)
        for frame in frames_THWC:
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _stored(folder: Path) -> dict[str, np.ndarray]:
    return {
        key: np.load(io.BytesIO(sample["frames.npy"]))
        for shard in read_index(folder).shards
        for key, sample in iter_shard(folder / shard.name)
    }


def _meta(folder: Path) -> dict[str, dict]:
    import json

    return {
        key: json.loads(sample["json"])
        for shard in read_index(folder).shards
        for key, sample in iter_shard(folder / shard.name)
    }


def _shard(tmp_path: Path, *args: str) -> None:
    run_cli("shard", *args, "--workers", "1", cwd=tmp_path, check=True)


# ------------------------------------------------------------------ images
def test_image_folders_convert_in_natural_order_with_path_keys_exactly(tmp_path):
    """Sequence folders at any depth; frames 1.png … 12.png in natural order (10.png after
    9.png); keys from the folder's path; PNG values exact; read back through the stream."""
    from stpdist.data.loading import LoaderContext
    from stpdist.data.stream import ShardEvalStream

    source = {"walk_p01": _gray(0, 12), "walk_p02": _gray(1, 12), "run_v_1": _gray(2, 12)}
    _pngs(tmp_path / "src" / "walk" / "p01", source["walk_p01"])
    _pngs(tmp_path / "src" / "walk" / "p02", source["walk_p02"], suffix=".PNG")
    _pngs(tmp_path / "src" / "run" / "v.1", source["run_v_1"])
    (tmp_path / "src" / "walk" / "p01" / "notes.txt").write_text("not a frame\n")
    (tmp_path / "src" / "walk" / "p01" / "._3.png").write_bytes(b"macOS metadata")
    proc = run_cli("shard", "images", "src", "--out", "ds", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ds/train: 3 samples in 1 shard, shape [12, 1, 16, 16] uint8, scale 255" in proc.stdout
    stored = _stored(tmp_path / "ds" / "train")
    assert sorted(stored) == sorted(source)
    for key, frames in source.items():
        np.testing.assert_array_equal(stored[key][:, 0], frames)  # 10.png is the 10th frame
    assert _meta(tmp_path / "ds" / "train")["run_v_1"]["source"] == "run/v.1"
    stream = ShardEvalStream(tmp_path / "ds" / "train", batch_size=2, num_input_frames=5,
                             num_output_frames=7)  # fmt: skip
    seen = []
    for inputs, targets, keys in stream.iterate(LoaderContext(rank=0, world_size=1)):
        for i, key in enumerate(keys):
            frames = np.concatenate([inputs[i].numpy(), targets[i].numpy()])[:, 0]
            want = source[key].astype(np.float32) / np.float32(255)
            assert frames.dtype == np.float32 and np.array_equal(frames, want), key
            seen.append(key)
    assert sorted(seen) == sorted(source)


def test_colour_alpha_palette_jpeg_and_gray(tmp_path):
    """RGBA loses its alpha, a palette image becomes its colours, a JPEG is what Pillow
    decodes; a grayscale first frame keeps 1 channel (LA: alpha dropped); --gray stores
    colour as Pillow's grayscale."""
    from PIL import Image

    rgba = np.concatenate([_colour(3, 4), np.full((4, SIZE, SIZE, 1), 7, np.uint8)], axis=-1)
    _pngs(tmp_path / "c" / "a_rgba", rgba)
    palette = [
        Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in _colour(4, 4)
    ]
    (tmp_path / "c" / "b_pal").mkdir()
    for i, image in enumerate(palette):
        image.save(tmp_path / "c" / "b_pal" / f"{i}.png")
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    smooth = np.stack([np.stack([4 * y + t, 4 * x, 2 * (x + y)], -1) for t in range(4)]).astype(
        np.uint8
    )
    _pngs(tmp_path / "c" / "c_jpg", smooth, suffix=".JPG", quality=95)
    _shard(tmp_path, "images", "c", "--out", "dc")
    stored = _stored(tmp_path / "dc" / "train")
    assert stored["a_rgba"].shape == (4, 3, SIZE, SIZE)
    np.testing.assert_array_equal(stored["a_rgba"], rgba[..., :3].transpose(0, 3, 1, 2))
    colours = np.stack([np.asarray(p.convert("RGB")) for p in palette])
    np.testing.assert_array_equal(stored["b_pal"], colours.transpose(0, 3, 1, 2))
    decoded = np.stack([np.asarray(Image.open(tmp_path / "c" / "c_jpg" / f"{i}.JPG"))
                        for i in range(1, 5)])  # fmt: skip
    np.testing.assert_array_equal(stored["c_jpg"], decoded.transpose(0, 3, 1, 2))
    assert np.abs(decoded.astype(int) - smooth).max() < 12  # a JPEG, not garbage

    _shard(tmp_path, "images", "c", "--out", "dg", "--gray")
    gray = _stored(tmp_path / "dg" / "train")["a_rgba"]
    want = np.stack([np.asarray(Image.fromarray(f[..., :3]).convert("L")) for f in rgba])
    np.testing.assert_array_equal(gray[:, 0], want)

    la = np.stack([_gray(5, 3), np.full((3, SIZE, SIZE), 9, np.uint8)], axis=-1)
    _pngs(tmp_path / "g" / "s", la)
    _shard(tmp_path, "images", "g", "--out", "dl")
    np.testing.assert_array_equal(_stored(tmp_path / "dl" / "train")["s"][:, 0], la[..., 0])
    _shard(tmp_path, "images", "g", "--out", "dr", "--rgb")
    assert np.array_equal(_stored(tmp_path / "dr" / "train")["s"],
                          np.repeat(la[:, None, :, :, 0], 3, axis=1))  # fmt: skip


def test_resize_windows_stride_every_and_a_short_sequence_said(tmp_path):
    from PIL import Image

    long, short = _gray(6, 12, (20, 24)), _gray(7, 4, (20, 24))
    _pngs(tmp_path / "s" / "long", long)
    _pngs(tmp_path / "s" / "short", short)
    proc = run_cli("shard", "images", "s", "--out", "d", "--size", "8x12", "--frames", "3",
                   "--stride", "2", "--every", "2", "--workers", "1", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # kept frames 0, 2, …, 10 (6); windows of 3 kept frames, starts 0 and 2 (frames 0 and 4)
    assert "1 of 2 sequence folders are shorter than --frames 3 (after --every 2)" in proc.stderr
    assert "(the first: s/short, 2 frames)" in proc.stderr
    stored = _stored(tmp_path / "d" / "train")
    assert sorted(stored) == ["long_00000", "long_00004"]

    def resized(frame: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(frame).resize((12, 8), Image.Resampling.BILINEAR))

    for key, frames in [("long_00000", [0, 2, 4]), ("long_00004", [4, 6, 8])]:
        assert stored[key].shape == (3, 1, 8, 12)
        np.testing.assert_array_equal(stored[key][:, 0], [resized(long[i]) for i in frames])
    meta = _meta(tmp_path / "d" / "train")["long_00004"]  # frames are named from 1: the file
    assert meta == {"source": "long", "start_frame": 4, "first_file": "5.png"}  # says which
    # --frames alone: windows side by side; --size H: square
    _shard(tmp_path, "images", "s", "--out", "d2", "--frames", "4", "--size", "10")
    stored = _stored(tmp_path / "d2" / "train")
    assert sorted(stored) == ["long_00000", "long_00004", "long_00008", "short_00000"]
    assert stored["short_00000"].shape == (4, 1, 10, 10)


def test_split_folders_and_splits_by_sequence(tmp_path):
    for split, count in [("train", 3), ("validation", 1), ("test", 2)]:
        for i in range(count):
            _pngs(tmp_path / "sp" / split / f"seq{i}", _gray(10 * len(split) + i, 5))
    _shard(tmp_path, "images", "sp", "--out", "dsp")
    counts = {s: read_index(tmp_path / "dsp" / s).num_samples for s in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 1, "test": 2}
    np.testing.assert_array_equal(_stored(tmp_path / "dsp" / "val")["seq0"][:, 0], _gray(100, 5))

    for i in range(8):
        _pngs(tmp_path / "flat" / f"s{i}", _gray(i, 5))
    cut = {}
    for out in ("a", "b"):
        _shard(tmp_path, "images", "flat", "--out", out, "--splits", "train=0.5,val=0.25,test=-1",
               "--seed", "3")  # fmt: skip
        cut[out] = {s: sorted(_stored(tmp_path / out / s)) for s in ("train", "val", "test")}
    assert cut["a"] == cut["b"]  # the same seed, the same splits
    assert [len(cut["a"][s]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert sorted(sum(cut["a"].values(), [])) == [f"s{i}" for i in range(8)]
    _shard(tmp_path, "images", "flat", "--out", "c", "--split", "test")
    assert read_index(tmp_path / "c" / "test").num_samples == 8

    proc = run_cli("shard", "images", "sp", "--out", "x1", "--splits", "train=1", cwd=tmp_path)
    assert "already has split folders (train/, validation/, test/); --splits" in error_line(proc)
    _pngs(tmp_path / "sp" / "valid" / "seq9", _gray(9, 5))  # not a split folder's name
    proc = run_cli("shard", "images", "sp", "--out", "x2", cwd=tmp_path)
    assert "sp has split folders; valid/ would be left out" in error_line(proc)
    assert not (tmp_path / "x1").exists() and not (tmp_path / "x2").exists()


def test_what_such_folders_get_wrong_is_refused_naming_the_file(tmp_path):
    from PIL import Image

    def refused(name: str, *flags: str) -> str:
        proc = run_cli("shard", "images", name, "--out", f"o_{name}", "--workers", "1", *flags,
                       cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 2 and not (tmp_path / f"o_{name}").exists(), proc.stderr
        return error_line(proc)

    _pngs(tmp_path / "size" / "a", _gray(0, 3))
    _pngs(tmp_path / "size" / "b", _gray(1, 3, (16, 20)))
    said = refused("size")
    assert said.startswith("size/b/1.png: frame of 16×20 pixels (H×W), the first frame "), said
    assert "(size/a/1.png) 16×16" in said and "pass --size H or HxW" in said
    _pngs(tmp_path / "len" / "a", _gray(0, 3))
    _pngs(tmp_path / "len" / "b", _gray(1, 3))
    _pngs(tmp_path / "len" / "c", _gray(2, 5))
    said = refused("len")
    assert (
        said.startswith("len/c: 5 frames, the first sequence (len/a) 3;") and "--frames N" in said
    )
    _pngs(tmp_path / "bad" / "a", _gray(0, 3))
    (tmp_path / "bad" / "a" / "2.png").write_bytes(b"not a png")
    assert refused("bad") == "bad/a/2.png: not an image file Pillow reads (damaged?)"
    _pngs(tmp_path / "badj" / "a", _gray(0, 3), suffix=".jpg")
    jpeg = tmp_path / "badj" / "a" / "3.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # cut short
    assert refused("badj").startswith("badj/a/3.jpg: not a readable image")
    (tmp_path / "deep" / "a").mkdir(parents=True)
    Image.fromarray(np.full((SIZE, SIZE), 4000, np.uint16)).save(tmp_path / "deep" / "a" / "1.png")
    Image.fromarray(np.full((SIZE, SIZE), 4000, np.uint16)).save(tmp_path / "deep" / "a" / "2.tif")
    assert refused("deep").startswith("deep/a/1.png: a 16-bit PNG")
    (tmp_path / "deep" / "a" / "1.png").unlink()  # a 16-bit TIFF: refused likewise
    assert refused("deep").startswith("deep/a/2.tif: 16 bits per sample (mode I;16); ")
    # 16-bit colour TIFF and PPM: Pillow reads them as "RGB", the high byte alone (a
    # formats review: [40000, 1000, 65535] was stored as [156, 3, 255], silently)
    (tmp_path / "deep" / "a" / "2.tif").unlink()
    colour = np.full((SIZE, SIZE, 3), [40000, 1000, 65535], np.uint16)
    _tiff_16bit_rgb(tmp_path / "deep" / "a" / "3.tif", colour)
    assert refused("deep").startswith("deep/a/3.tif: 16 bits per sample (mode RGB); ")
    (tmp_path / "deep" / "a" / "3.tif").unlink()
    header = f"P6\n{SIZE} {SIZE}\n65535\n".encode()
    (tmp_path / "deep" / "a" / "4.ppm").write_bytes(header + colour.astype(">u2").tobytes())
    assert refused("deep").startswith("deep/a/4.ppm: 16 bits per sample (mode RGB); ")
    _pngs(tmp_path / "mix" / "a", _gray(0, 3))
    _pngs(tmp_path / "mix" / "b", _colour(0, 3))
    said = refused("mix")
    assert said.startswith("mix/b/1.png: a colour frame (mode RGB), while the first frame")
    assert "pass --rgb" in said
    # a palette frame of grays is a grayscale frame (it was refused as colour); one of
    # colours is not
    from PIL import Image

    grays = _gray(3, 3)
    (tmp_path / "mixp" / "b").mkdir(parents=True)
    _pngs(tmp_path / "mixp" / "a", _gray(0, 3))
    for i, frame in enumerate(grays):
        Image.fromarray(frame).convert("P").save(tmp_path / "mixp" / "b" / f"{i + 1}.png")
    _shard(tmp_path, "images", "mixp", "--out", "grays")
    np.testing.assert_array_equal(_stored(tmp_path / "grays" / "train")["b"][:, 0], grays)
    Image.fromarray(_colour(1, 1)[0]).convert("P").save(tmp_path / "mixp" / "b" / "2.png")
    assert refused("mixp").startswith("mixp/b/2.png: a colour frame (mode P), while the first")
    _pngs(tmp_path / "keys" / "a_b", _gray(0, 3))
    _pngs(tmp_path / "keys" / "a" / "b", _gray(1, 3))
    said = refused("keys")
    assert "keys/a/b and keys/a_b both give the sample key 'a_b'" in said, said
    _pngs(tmp_path / "loose", _gray(0, 3))
    assert "loose: the image files 1.png, 2.png, 3.png lie in it directly" in refused("loose")
    _pngs(tmp_path / "all_short" / "a", _gray(0, 3))
    said = refused("all_short", "--frames", "4")
    assert "every sequence is shorter than --frames 4 (the longest: 3 frames)" in said
    for flags, expected in [
        (["--size", "0x4"], "--size 0x4: expected H (square frames) or HxW"),
        (["--stride", "2"], "--stride 2 needs --frames"),
        (["--every", "0"], "--every 0: expected at least 1"),
        (["--gray", "--rgb"], "--gray and --rgb: choose one"),
    ]:
        assert expected in refused("len", *flags)


# ------------------------------------------------------------------ videos
def _smooth(count: int, shift: int = 0) -> np.ndarray:
    """T×H×W×3 frames without sharp edges (lossy codecs keep them within a few levels)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack(
        [
            np.stack([4 * y + 8 * t + shift, 4 * x + 2 * t, 60 + 2 * (x + y)], -1)
            for t in range(count)
        ]
    ).astype(np.uint8)


def test_videos_flat_and_nested_decode_exactly_in_rgb_gray_and_windows(tmp_path):
    source = {"a": _colour(0, 6), "cls_b": _colour(1, 6)}
    _video(tmp_path / "v" / "a.mkv", source["a"])
    _video(tmp_path / "v" / "cls" / "b.avi", source["cls_b"])
    (tmp_path / "v" / "cls" / "b.avi").rename(tmp_path / "v" / "cls" / "b.AVI")
    # two workers, from this test process that wrote videos and decoded others with PyAV:
    # workers forked from it hung in FFmpeg's scaler threads (test_convert_inputs' lock test)
    proc = run_cli("shard", "videos", "v", "--out", "d", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stored = _stored(tmp_path / "d" / "train")
    assert sorted(stored) == ["a", "cls_b"]
    for key, frames in source.items():  # ffv1: lossless, RGB by default
        np.testing.assert_array_equal(stored[key], frames.transpose(0, 3, 1, 2))
    assert _meta(tmp_path / "d" / "train")["cls_b"]["source"] == "cls/b.AVI"

    gray = np.repeat(_gray(2, 7)[..., None], 3, axis=-1)  # gray content: luma is the value
    _video(tmp_path / "g" / "train" / "c.mkv", gray)
    _video(tmp_path / "g" / "test" / "d.mkv", gray[::-1])
    _shard(tmp_path, "videos", "g", "--out", "dg", "--gray", "--every", "2", "--frames", "2")
    train, test = _stored(tmp_path / "dg" / "train"), _stored(tmp_path / "dg" / "test")
    assert sorted(train) == ["c_00000", "c_00004"] and sorted(test) == ["d_00000", "d_00004"]
    np.testing.assert_array_equal(train["c_00004"][:, 0], gray[[4, 6], ..., 0])
    np.testing.assert_array_equal(test["d_00000"][:, 0], gray[::-1][[0, 2], ..., 0])

    # a video review: a phone's portrait clip (landscape frames, display rotation 90° or
    # -90°) was stored on its side; stored upright now, as players show it
    wide = _colour(3, 4)[:, :8]  # 8×16: a turn shows up in the shape
    _video(tmp_path / "r" / "left.mkv", wide, rotation=90)
    _video(tmp_path / "r" / "right.mkv", wide, rotation=-90)
    _shard(tmp_path, "videos", "r", "--out", "dr")
    turned = _stored(tmp_path / "dr" / "train")
    np.testing.assert_array_equal(
        turned["left"], np.rot90(wide, 1, axes=(1, 2)).transpose(0, 3, 1, 2)
    )
    np.testing.assert_array_equal(
        turned["right"], np.rot90(wide, -1, axes=(1, 2)).transpose(0, 3, 1, 2)
    )
    # a portrait clip beside a landscape one: refused as another size, saying it was turned
    _video(tmp_path / "mixed" / "a_land.mkv", wide)
    _video(tmp_path / "mixed" / "b_port.mkv", wide, rotation=90)
    proc = run_cli("shard", "videos", "mixed", "--out", "dm", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "b_port.mkv (turned 90° by its display rotation): frame of 16×8 pixels" in proc.stderr


def test_lossy_video_resized_and_what_is_refused(tmp_path):
    from PIL import Image

    frames = _smooth(5)
    _video(tmp_path / "m" / "clip.mp4", frames, codec="mpeg4", pix_fmt="yuv420p")
    _shard(tmp_path, "videos", "m", "--out", "dm", "--size", "8")
    stored = _stored(tmp_path / "dm" / "train")["clip"]
    av = pytest.importorskip("av")
    with av.open(str(tmp_path / "m" / "clip.mp4")) as container:  # what the codec kept
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    def resized(frames_THWC: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(Image.fromarray(f).resize((8, 8), Image.Resampling.BILINEAR))
                         for f in frames_THWC]).transpose(0, 3, 1, 2)  # fmt: skip

    np.testing.assert_array_equal(stored, resized(np.stack(decoded)))
    assert np.abs(stored.astype(int) - resized(frames)).mean() < 4  # lossy, not garbage

    def refused(name: str, *flags: str) -> str:
        proc = run_cli("shard", "videos", name, "--out", f"o_{name}", "--workers", "1", *flags,
                       cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 2 and not (tmp_path / f"o_{name}").exists(), proc.stderr
        return error_line(proc)

    _video(tmp_path / "len" / "a.mkv", _colour(0, 4))
    _video(tmp_path / "len" / "b.mkv", _colour(1, 6))
    said = refused("len")
    assert said.startswith("len/b.mkv: 6 frames, the first sequence (len/a.mkv) 4;"), said
    _video(tmp_path / "bad" / "a.mkv", _colour(0, 4))
    (tmp_path / "bad" / "b.mp4").write_bytes(b"\x00" * 64)
    assert refused("bad").startswith("bad/b.mp4: not a readable video")
    _video(tmp_path / "size" / "a.mkv", _colour(0, 3))
    _video(tmp_path / "size" / "b.mkv", np.zeros((3, 8, 8, 3), np.uint8))
    said = refused("size")
    assert said.startswith("size/b.mkv: frame of 8×8 pixels (H×W), the first frame (size/a.mkv)")
    _video(tmp_path / "dup" / "a.mkv", _colour(0, 3))
    _video(tmp_path / "dup" / "a.avi", _colour(1, 3))
    assert "dup/a.avi and dup/a.mkv both give the sample key 'a'" in refused("dup")
    # a video review: an .mp4 cut short (its index, at the end, lost) read as audio-only
    _video(tmp_path / "cut" / "a.mkv", _colour(0, 3))
    _video(tmp_path / "cut" / "b.mp4", _colour(1, 6), codec="mpeg4", pix_fmt="yuv420p")
    cut = tmp_path / "cut" / "b.mp4"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 6 // 10])
    assert refused("cut").startswith("cut/b.mp4: no video stream (a file cut short, whose index")
    # and a Matroska file cut short (no frame count in it: its packets counted) was converted
    # short without a word
    _video(tmp_path / "mkv" / "b.mkv", _colour(1, 30))
    cut = tmp_path / "mkv" / "b.mkv"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 6 // 10])
    proc = run_cli("shard", "videos", "mkv", "--out", "o_mkv", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    said = r"mkv/b\.mkv: 1\d frames read, where its duration, 1\.2 s at 25 frames/s, makes 30: a "
    assert re.search(said + r"file cut short\?", proc.stderr), proc.stderr
    whole = tmp_path / "whole" / "a.mkv"
    _video(whole, _colour(1, 30))
    _video(tmp_path / "whole" / "b.avi", _colour(2, 12), rate=30)  # another rate: said
    _video(tmp_path / "whole" / "c.avi", _colour(3, 12), rate=25)
    proc = run_cli("shard", "videos", "whole", "--out", "o_whole", "--frames", "6",
                   "--workers", "1", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0 and "cut short" not in proc.stderr, proc.stderr
    assert "b.avi: 30 frames/s, the first video (a.mkv) 25 (1 video(s) of other rates)" in (
        proc.stderr
    ), proc.stderr


def _trimmed_clip(path: Path) -> None:
    """A clip cut as `ffmpeg -ss 1.4 -i src.mp4 -c copy` cuts it: packets from the keyframe
    before 1.4 s, its 10 lead-in frames at negative times (an mp4 edit list): 35 frames
    declared, 25 shown."""
    av = pytest.importorskip("av")
    if "libx264" not in av.codecs_available:
        pytest.skip("PyAV without libx264")
    source = path.with_name("source.mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "25", "keyint_min": "25", "bf": "0"}
        for t in range(60):
            frame = np.zeros((SIZE, SIZE, 3), np.uint8)
            frame[..., 0] = 4 * t
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(source)) as given, av.open(str(path), "w") as cut:
        stream = given.streams.video[0]
        out = cut.add_stream_from_template(stream)
        shift = int(1.4 / stream.time_base)
        for packet in given.demux(stream):
            if packet.dts is None or packet.pts < int(1.0 / stream.time_base):
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = out
            cut.mux(packet)
    source.unlink()


def test_what_a_video_users_folders_hold_is_read_as_meant(tmp_path):
    """From a video user's review: `Train/`, `Test/` were merged into one train split (test
    data trained on); short sequences emptied a split and the command exited 0; gray videos
    were stored as 3 equal channels without a word; a phone's JPEG was stored unturned; a
    clip trimmed without re-encoding (an edit list) was refused as damaged."""
    for split, seed in (("Train", 1), ("Test", 2)):
        _pngs(tmp_path / "cap" / split / "a", _gray(seed, 4))
    _shard(tmp_path, "images", "cap", "--out", "dc")
    assert sorted(p.name for p in (tmp_path / "dc").iterdir() if p.is_dir()) == ["test", "train"]
    _pngs(tmp_path / "near" / "training" / "a", _gray(1, 4))
    _pngs(tmp_path / "near" / "testing" / "b", _gray(2, 4))
    proc = run_cli("shard", "images", "near", "--out", "dn", cwd=tmp_path)
    assert "near: testing/, training/ look like split folders" in error_line(proc)
    _shard(tmp_path, "images", "near", "--out", "dn", "--split", "train")  # one split, named
    assert sorted(_stored(tmp_path / "dn" / "train")) == ["testing_b", "training_a"]

    _pngs(tmp_path / "short" / "train" / "a", _gray(1, 6))
    _pngs(tmp_path / "short" / "val" / "b", _gray(2, 3))
    proc = run_cli("shard", "images", "short", "--out", "ds", "--frames", "4", cwd=tmp_path)
    assert (
        error_line(proc).endswith(
            "short/val: every sequence is shorter than --frames 4, so the split would hold no "
            "sample: lower --frames"
        )
        and not (tmp_path / "ds").exists()
    )
    for name, seed, count in (("a", 1, 6), ("b", 2, 6), ("c", 3, 3)):
        _pngs(tmp_path / "flat" / name, _gray(seed, count))
    _shard(
        tmp_path, "images", "flat", "--out", "df", "--frames", "4", "--splits", "train=1,val=1"
    )  # fmt: skip (c left out before the cut: both splits get one)
    assert [read_index(tmp_path / "df" / s).num_samples for s in ("train", "val")] == [1, 1]

    gray = np.repeat(_gray(2, 4)[..., None], 3, axis=-1)
    _video(tmp_path / "g" / "c.mkv", gray)
    proc = run_cli("shard", "videos", "g", "--out", "dg", "--workers", "1", cwd=tmp_path)
    assert "the first frame is gray (its 3 channels are equal)" in proc.stderr, proc.stderr

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise
    (tmp_path / "phone" / "clip").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_gray(i, 2, (8, 12))[0]).save(tmp_path / "phone" / "clip" / f"{i}.jpg",
                                                       exif=exif)  # fmt: skip
    _shard(tmp_path, "images", "phone", "--out", "dp")
    assert read_index(tmp_path / "dp" / "train").shape == [2, 1, 12, 8]  # as viewers show it

    _trimmed_clip(tmp_path / "cut" / "clip.mp4")
    proc = run_cli("shard", "videos", "cut", "--out", "dt", "--frames", "10", "--workers", "1",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "decoded 25 of the 35 frames its container declares" in proc.stderr, proc.stderr
    assert sorted(_stored(tmp_path / "dt" / "train")) == ["clip_00000", "clip_00010"]


def test_linked_sequence_folders_and_names_that_extend_another_are_read(tmp_path):
    """A code review: sequence folders that are symbolic links (splits made of links to the
    data, not copies) were passed over without a word; folders `seq` and `seq2` stopped
    the conversion with a TypeError of the natural sort; a folder named like a split
    (`dev/`) had no way through with --splits."""
    from stpdist.data.sources.common import natural_key

    names = ["seq10", "seq", "seq2", "val/csi2", "val/csi", "2.png", "0002.png"]
    assert sorted(names, key=natural_key) == [
        "0002.png", "2.png", "seq", "seq2", "seq10", "val/csi", "val/csi2"
    ]  # fmt: skip
    _pngs(tmp_path / "store" / "s1", _gray(1, 3))
    _pngs(tmp_path / "lnk" / "train" / "seq", _gray(2, 3))
    (tmp_path / "lnk" / "train" / "seq2").symlink_to(tmp_path / "store" / "s1")
    (tmp_path / "lnk" / "train" / "seq2" / "loop").symlink_to(tmp_path / "lnk")  # a cycle
    _shard(tmp_path, "images", "lnk", "--out", "d")
    stored = _stored(tmp_path / "d" / "train")
    assert sorted(stored) == ["seq", "seq2"]
    np.testing.assert_array_equal(stored["seq2"][:, 0], _gray(1, 3))

    for name, seed in (("dev", 1), ("a", 2), ("b", 3), ("c", 4)):
        _pngs(tmp_path / "cut" / name, _gray(seed, 3))
    _shard(tmp_path, "images", "cut", "--out", "dc", "--splits", "train=2,test=2")
    assert [read_index(tmp_path / "dc" / s).num_samples for s in ("train", "test")] == [2, 2]


def test_a_broken_link_among_the_frames_is_said_as_such(tmp_path):
    """A frame that is a symbolic link to nothing was said as "no such file" (it is listed
    in the folder): its link and target named."""
    _pngs(tmp_path / "in" / "a", _gray(0, 3))
    (tmp_path / "in" / "a" / "3.png").unlink()
    (tmp_path / "in" / "a" / "3.png").symlink_to(tmp_path / "gone.png")
    proc = run_cli("shard", "images", "in", "--out", "o", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"in/a/3.png: a broken symbolic link (to {tmp_path / 'gone.png'}, which does not " in (
        proc.stderr
    )
