"""`stpdist shard tars`: tar shards written by other tools (webdataset's TarWriter here, the
tool such shards most often come from) converted to stpdist's shards: frames, keys, splits
and value scale as given, and the mistakes such folders hold refused, named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from stpdist.data.format import iter_shard, read_index


def _frames(split: str, i: int) -> np.ndarray:
    return np.random.default_rng([len(split), i]).integers(0, 256, (6, 8, 8), dtype=np.uint8)


def _write(path: Path, samples: list[dict]) -> None:
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def _stored(folder: Path) -> dict[str, np.ndarray]:
    import io

    return {
        key: np.load(io.BytesIO(sample["frames.npy"]))
        for shard in read_index(folder).shards
        for key, sample in iter_shard(folder / shard.name)
    }


def test_webdataset_shards_in_split_folders_convert_with_their_keys_and_frames(tmp_path):
    for split, count in [("train", 5), ("validation", 2)]:
        for part in range(2):  # two tars a split
            _write(tmp_path / "src" / split / f"part-{part}.tar", [
                {"__key__": f"{split}{part}_{i}", "video.npy": _frames(split, 10 * part + i),
                 "cls": str(i).encode()}  # another member beside the frames
                for i in range(count)
            ])  # fmt: skip
    run_cli("shard", "tars", "src", "--out", "ds", "--workers", "1", cwd=tmp_path, check=True)
    for split, name, count in [("train", "train", 5), ("val", "validation", 2)]:
        index = read_index(tmp_path / "ds" / split)
        assert (index.num_samples, index.dtype, index.value_scale) == (2 * count, "uint8", 255)
        assert index.shape == [6, 1, 8, 8]
        stored = _stored(tmp_path / "ds" / split)
        assert sorted(stored) == sorted(f"{name}{p}_{i}" for p in range(2) for i in range(count))
        for part in range(2):
            for i in range(count):
                frames = stored[f"{name}{part}_{i}"]
                np.testing.assert_array_equal(frames[:, 0], _frames(name, 10 * part + i))
    proc = run_cli("inspect", "ds/train", "--verify", "--samples", "0", cwd=tmp_path)
    assert proc.returncode == 0 and "bytes, counts, dtypes, shapes, keys OK" in proc.stdout


def test_what_such_folders_get_wrong_is_refused_naming_the_tar_and_sample(tmp_path):
    two = {"__key__": "s0", "a.npy": _frames("x", 0), "b.npy": _frames("x", 1)}
    _write(tmp_path / "two" / "x.tar", [two])
    proc = run_cli("shard", "tars", "two", "--out", "o", cwd=tmp_path)
    said = "two/x.tar: sample s0: 2 .npy members among a.npy, b.npy; choose one with --member"
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    run_cli("shard", "tars", "two", "--out", "o", "--member", "b.npy", "--split", "test",
            "--workers", "1", cwd=tmp_path, check=True)  # fmt: skip
    np.testing.assert_array_equal(_stored(tmp_path / "o" / "test")["s0"][:, 0], _frames("x", 1))
    # one key in two tars
    _write(tmp_path / "dup" / "a.tar", [{"__key__": "k", "npy": _frames("d", 0)}])
    _write(tmp_path / "dup" / "b.tar", [{"__key__": "k", "npy": _frames("d", 1)}])
    proc = run_cli("shard", "tars", "dup", "--out", "o2", "--workers", "1", cwd=tmp_path)
    said = "dup/b.tar: sample key 'k' is also that of a sample from dup/a.tar"
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    # two members of one tar whose names give one key: both named (the writer's line named
    # the key alone)
    import io
    import tarfile

    (tmp_path / "same").mkdir()
    with tarfile.open(tmp_path / "same" / "a.tar", "w") as tar:
        for name in ("clip/0001.npy", "clip_0001.npy"):
            buffer = io.BytesIO()
            np.save(buffer, _frames("s", 0))
            info = tarfile.TarInfo(name)
            info.size = len(buffer.getvalue())
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
    proc = run_cli("shard", "tars", "same", "--out", "o5", "--workers", "1", cwd=tmp_path)
    said = "same/a.tar: samples clip/0001 and clip_0001 both give the sample key 'clip_0001'"
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    # floats a guessed value scale of 1 leaves outside [0, 1]: the tar and the sample named
    hot = (_frames("h", 0) * 2.0).astype(np.float32)
    _write(tmp_path / "hot" / "a.tar", [{"__key__": "h0", "npy": hot}])
    proc = run_cli("shard", "tars", "hot", "--out", "o3", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "hot/a.tar: sample h0: values span 0…510 (float32), outside [0, 1]" in proc.stderr
    # a compressed tar, and a folder without tars
    import gzip

    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "a.tar").write_bytes(
        gzip.compress((tmp_path / "dup" / "a.tar").read_bytes())
    )
    proc = run_cli("shard", "tars", "gz", "--out", "o4", cwd=tmp_path)
    assert proc.returncode == 2 and "gz/a.tar: gzip-compressed" in proc.stderr, proc.stderr
    (tmp_path / "none").mkdir()
    proc = run_cli("shard", "tars", "none", "--out", "o5", cwd=tmp_path)
    assert proc.returncode == 2 and "none: no .tar files" in proc.stderr, proc.stderr
    assert not any((tmp_path / name).exists() for name in ("o2", "o3", "o4", "o5"))


@pytest.mark.parametrize("layout", ["thw", "thwc"])
def test_frames_in_other_layouts(tmp_path, layout):
    frames = _frames("l", 0)
    given = frames if layout == "thw" else np.stack([frames, 255 - frames], axis=-1)
    _write(tmp_path / "src" / "a.tar", [{"__key__": "s", "npy": given}])
    flags = ["--channels-last"] if layout == "thwc" else []
    run_cli("shard", "tars", "src", "--out", "ds", *flags, "--workers", "1", cwd=tmp_path,
            check=True)  # fmt: skip
    stored = _stored(tmp_path / "ds" / "train")["s"]
    expected = given[:, None] if layout == "thw" else given.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(stored, expected)


def test_what_a_review_of_the_converter_found(tmp_path):
    """float64 samples after a float32 first sample were stored out of range silently (only
    the first sample's dtype was checked); `--member` naming an .npz crashed; keys with a
    dot were told to choose a member (dropping samples); images, upper-case NPY, an empty
    first tar, macOS's `._` files and tars in an unknown sub-folder each misled."""
    import io

    unit = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    _write(tmp_path / "mix" / "a.tar", [{"__key__": "a0", "npy": unit},
                                         {"__key__": "a1", "npy": unit.astype(np.float64) * 255}])  # fmt: skip
    proc = run_cli("shard", "tars", "mix", "--out", "o1", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "mix/a.tar: sample a1: values span" in proc.stderr, proc.stderr
    buffer = io.BytesIO()
    np.savez(buffer, x=_frames("z", 0))
    _write(tmp_path / "npz" / "a.tar", [{"__key__": "z0", "arr.npz": buffer.getvalue()}])
    proc = run_cli("shard", "tars", "npz", "--out", "o2", "--member", "arr.npz", cwd=tmp_path)
    assert proc.returncode == 2 and "arr.npz is no .npy array" in proc.stderr, proc.stderr
    _write(tmp_path / "dots" / "a.tar", [{"__key__": "run.1", "npy": _frames("d", 0)},
                                          {"__key__": "run.2", "npy": _frames("d", 1)}])  # fmt: skip
    proc = run_cli("shard", "tars", "dots", "--out", "o3", cwd=tmp_path)
    assert proc.returncode == 2 and "whose keys hold a dot (run.1.npy" in proc.stderr, proc.stderr
    _write(tmp_path / "jpg" / "a.tar", [{"__key__": "j0", "0000.jpg": b"\xff\xd8\xff"}])
    proc = run_cli("shard", "tars", "jpg", "--out", "o4", cwd=tmp_path)
    assert proc.returncode == 2 and "frames as images are not read" in proc.stderr, proc.stderr
    _write(tmp_path / "odd" / "train" / "a.tar", [])  # an empty first tar
    _write(tmp_path / "odd" / "train" / "b.tar", [{"__key__": "u0", "NPY": _frames("u", 0)}])
    (tmp_path / "odd" / "train" / "._b.tar").write_bytes(b"\0\5\26\7 AppleDouble")
    run_cli("shard", "tars", "odd", "--out", "o5", "--workers", "1", cwd=tmp_path, check=True)
    assert sorted(_stored(tmp_path / "o5" / "train")) == ["u0"]
    _write(tmp_path / "odd" / "dev" / "c.tar", [{"__key__": "d0", "npy": _frames("v", 0)}])
    proc = run_cli("shard", "tars", "odd", "--out", "o6", cwd=tmp_path)
    assert proc.returncode == 2 and "the tars in dev/ would be left out" in proc.stderr
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3, 4, 6))


def test_keys_keep_their_folders_as_webdataset_keys_them(tmp_path):
    """`clipA/0001` and `clipB/0001` (a video's frames-sequence index, a common layout) were
    one key `0001` and the tar was refused; the keys are webdataset's, folders kept (stored
    with `_` for `/`), a leading `./` (tar -C dir .) left out."""
    import io
    import tarfile

    (tmp_path / "src").mkdir()
    with tarfile.open(tmp_path / "src" / "a.tar", "w") as tar:
        for i, name in enumerate(["clipA/0001.npy", "clipB/0001.npy", "./c.npy"]):
            buffer = io.BytesIO()
            np.save(buffer, _frames("f", i))
            member = tarfile.TarInfo(name)
            member.size = len(buffer.getvalue())
            tar.addfile(member, io.BytesIO(buffer.getvalue()))
    run_cli("shard", "tars", "src", "--out", "ds", "--workers", "1", cwd=tmp_path, check=True)
    stored = _stored(tmp_path / "ds" / "train")
    assert sorted(stored) == ["c", "clipA_0001", "clipB_0001"]
    np.testing.assert_array_equal(stored["clipB_0001"][:, 0], _frames("f", 1))


def test_a_tar_cut_at_a_member_boundary_is_refused(tmp_path):
    """A dataops review: a tar cut at a member's end (no end-of-archive block: a writer
    killed there leaves exactly this) converted in part, without a word."""
    import tarfile

    tar = tmp_path / "src" / "train" / "b.tar"
    _write(tar, [{"__key__": f"s{i}", "video.npy": _frames("train", i)} for i in range(4)])
    with tarfile.open(tar) as archive:
        cut = archive.getmembers()[2].offset  # the third sample's first header
    tar.write_bytes(tar.read_bytes()[:cut])
    proc = run_cli("shard", "tars", "src", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "b.tar: it ends without the tar end-of-archive block" in proc.stderr
    assert not (tmp_path / "ds").exists()
    tar.write_bytes(b"")  # cut at its start (a diff review: converted without a word)
    proc = run_cli("shard", "tars", "src", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "b.tar: it is empty (0 bytes: no tar)" in proc.stderr
