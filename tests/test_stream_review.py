"""Shard streams, from a code-reading review of stream.py (each case reproduced first):

- the samples an epoch leaves out were the same every epoch in a split of one shard
  (what `synth` and `shard` write for fewer than 1000 samples), though the docs and the
  run's banner said "a different set each epoch": layout 3 rotates the epoch's sample
  sequence by an offset of (seed, epoch); runs begun with layout 2 keep it;
- skip mode (`data.skip_bad_samples`): a worker or rank whose whole share lay inside a
  damaged shard failed the run ("no readable sample to fill a batch"), the very case the
  mode is for; it fills from the split's first readable samples;
- skip mode: one sample without `frames.npy` threw away the rest of its shard.

Shards are real tars written by `SplitWriter`, read by the real streams (no DataLoader
workers: the layout with workers is the same one, tests/test_stream.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from stpdist.data.format import ShardFormatError, SplitWriter
from stpdist.data.loading import LoaderContext
from stpdist.data.stream import ShardEvalStream, ShardTrainStream


def _split(folder: Path, sizes: list[int]) -> list[str]:
    """A split of shards of `sizes` samples (sample n: frames of value n % 256)."""
    keys = []
    with SplitWriter(folder, "train", value_scale=255, samples_per_shard=10**6) as writer:
        for size in sizes:
            writer.new_shard()
            for _ in range(size):
                key = f"s{len(keys):05d}"
                writer.write(key, np.full((2, 1, 2, 2), len(keys) % 256, np.uint8))
                keys.append(key)
    return keys


def _epoch_keys(stream: ShardTrainStream, ctx: LoaderContext, epoch: int) -> list[str]:
    return [key for _, _, batch_keys in stream.iterate(ctx, epoch) for key in batch_keys]


def _stream(folder: Path, **kwargs) -> ShardTrainStream:
    return ShardTrainStream(
        folder, batch_size=4, num_input_frames=1, num_output_frames=1, shuffle_buffer=8, **kwargs
    )


@pytest.mark.parametrize("world", [1, 2])
def test_an_epoch_leaves_out_other_samples_every_epoch_in_a_one_shard_split(tmp_path, world):
    keys = _split(tmp_path / "train", [30])
    stream = _stream(tmp_path / "train")
    left_out = []
    for epoch in range(6):
        seen = []
        for rank in range(world):
            seen += _epoch_keys(stream, LoaderContext(rank, world, seed=0), epoch)
        assert len(seen) == len(set(seen)) == (28 if world == 1 else 24)  # none twice
        left_out.append(frozenset(keys) - set(seen))
    # drawn anew each epoch (an offset of (seed, epoch): two epochs may draw alike)
    assert len(set(left_out)) >= 4, left_out
    assert len(frozenset().union(*left_out)) >= 3 * len(left_out[0])


def test_a_run_begun_with_layout_2_keeps_its_epochs(tmp_path):
    """Layout 2's epochs are what they were: a resumed run's rest of an epoch stays the
    samples it had left."""
    _split(tmp_path / "train", [30])
    stream = _stream(tmp_path / "train")
    old = [_epoch_keys(stream, LoaderContext(layout=2), epoch) for epoch in range(3)]
    assert all(sorted(keys) == sorted(old[0]) for keys in old)  # always the same 28
    assert _epoch_keys(stream, LoaderContext(layout=2), 1) == old[1]


def test_skip_mode_fills_a_share_that_lies_wholly_in_a_damaged_shard(tmp_path, caplog):
    _split(tmp_path / "train", [8, 8, 8, 8])
    shard = tmp_path / "train" / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[:512])  # its first member's header alone: all lost
    stream = ShardTrainStream(
        tmp_path / "train", batch_size=2, num_input_frames=1, num_output_frames=1,
        shuffle_buffer=4, skip_bad=True,
    )  # fmt: skip
    for layout in (2, 3, 4):  # layout 2 on 4 ranks: one rank's share is the damaged shard
        for world in (1, 2, 4):
            for rank in range(world):
                ctx = LoaderContext(rank, world, seed=0, layout=layout)
                batches = list(stream.iterate(ctx, 0))
                assert len(batches) == stream.batches_per_epoch(ctx)
                assert all(len(keys) == 2 for _, _, keys in batches)
    assert "filled with the split's first readable samples" in caplog.text
    # each reason said once (layout 4 enters the damaged shard by up to 16 pieces a worker:
    # a review counted 25 lines for one truncated shard), the totals at each pass's end
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert said and len(said) == len({m.split(": ", 1)[1] for m in said}), said
    # no count on that line: it was the first piece's alone ("skipping 2" of 8 lost)
    assert all(m.startswith("skipping bad samples (the pass's count at its end): ") for m in said)


def test_skip_mode_loses_only_the_sample_without_frames(tmp_path):
    _split(tmp_path / "train", [10, 10])
    path = tmp_path / "train" / "train-000000.tar"
    with tarfile.open(path) as source:
        members = [(m, source.extractfile(m).read()) for m in source.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
        for member, data in members:
            if member.name == "s00003.frames.npy":
                member.name = "s00003.framez.npy"  # its frames member misnamed
            out.addfile(member, io.BytesIO(data))
    stream = ShardEvalStream(
        tmp_path / "train", batch_size=4, num_input_frames=1, num_output_frames=1, skip_bad=True
    )
    seen = sorted(key for _, _, keys in stream.iterate(LoaderContext()) for key in keys)
    assert seen == [f"s{i:05d}" for i in range(20) if i != 3]
    assert stream.bad_samples == 1


def _two_member_shard(path: Path) -> bytes:
    """A shard of samples k0..k2, each a frames.npy and a txt member; returns its bytes."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(3):
            buffer = io.BytesIO()
            np.save(buffer, np.full((4, 1, 4, 4), i, np.uint8))
            for name, data in [(f"k{i}.frames.npy", buffer.getvalue()), (f"k{i}.txt", b"x")]:
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    return path.read_bytes()


@pytest.mark.parametrize("skip", [0, 1])
def test_the_whole_sample_before_a_truncated_member_is_read(tmp_path, skip):
    """A shard cut inside a sample's member lost the sample before it too (a sample was
    handed on when the next one's data had been read): it is read, and counted as read in
    skip mode, where the damaged member is the next sample's; where it is the same
    sample's (its other member cut short), that sample is lost with the rest."""
    from stpdist.data.format import iter_shard

    shard = tmp_path / "train-000000.tar"
    data = _two_member_shard(shard)
    for cut_in, read in [("k2.frames.npy", ["k0", "k1"]), ("k1.txt", ["k0"])]:
        start = data.index(cut_in.encode()) + 512  # past its header: inside its data
        shard.write_bytes(data[: start + (8 if cut_in.endswith("npy") else 0)])
        keys = []
        with pytest.raises(ShardFormatError, match=rf"truncated member {cut_in}"):
            for key, sample in iter_shard(shard, skip=skip):
                keys.append(key)
                assert ("frames.npy" in sample) == (len(keys) > skip), sample
        assert keys == read, cut_in


def test_skip_mode_counts_lost_only_the_samples_from_the_cut_on(tmp_path):
    """The sample before the one cut short is read and counted as read."""
    keys = _split(tmp_path / "train", [10, 10])
    shard = tmp_path / "train" / "train-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: data.index(b"s00007.frames.npy") + 520])  # inside s00007's data
    stream = ShardEvalStream(
        tmp_path / "train", batch_size=4, num_input_frames=1, num_output_frames=1,
        skip_bad=True,
    )  # fmt: skip
    seen = [key for _, _, batch in stream.iterate(LoaderContext()) for key in batch]
    assert sorted(seen) == keys[:7] + keys[10:] and stream.bad_samples == 3


def _tar_of(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def _npy(value: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.full((2, 1, 2, 2), value, np.uint8))
    return buffer.getvalue()


def test_shards_from_other_tools_are_read_or_refused_saying_why(tmp_path):
    """A review's tars of users' own making: macOS's `.DS_Store` and `._<name>` members
    counted as samples of key '' (the shard "holds more samples than the index says"); a
    sample's members apart (GNU tar in directory order), or two folders of one file name,
    were said as a count the index got wrong, or merged into one sample; a gzip-compressed
    shard was "truncated tar header". Now: passed over as webdataset does; refused naming
    the member and the rule; named as compressed."""
    from stpdist.data.format import count_samples, iter_shard

    shard = tmp_path / "train-000000.tar"
    _tar_of(shard, [(".DS_Store", b"x"), ("d/._s0.frames.npy", b"x"), ("d/s0.frames.npy", _npy(0)),
                    ("d/s1.frames.npy", _npy(1))])  # fmt: skip
    assert count_samples(shard) == (2, True)
    assert [key for key, _ in iter_shard(shard)] == ["s0", "s1"]
    again = r"member s0\.json: sample key 's0' comes again after other samples; a sample's"
    twice = r"member b/s0\.frames\.npy: sample 's0' holds a member of this name already"
    for members, said in [
        ([("s0.frames.npy", _npy(0)), ("s1.frames.npy", _npy(1)), ("s0.json", b"{}")], again),
        (
            [
                ("a/s0.frames.npy", _npy(0)),
                ("b/s0.frames.npy", _npy(1)),
                ("a/s1.frames.npy", _npy(2)),
                ("b/s1.frames.npy", _npy(3)),
            ],
            twice,
        ),  # fmt: skip
    ]:
        _tar_of(shard, members)
        with pytest.raises(ShardFormatError, match=said):
            count_samples(shard)
        with pytest.raises(ShardFormatError, match=said):
            list(iter_shard(shard))
    import gzip

    _tar_of(shard, [("s0.frames.npy", _npy(0))])
    shard.write_bytes(gzip.compress(shard.read_bytes()))
    for read in (count_samples, lambda path: list(iter_shard(path))):
        with pytest.raises(ShardFormatError, match=r"train-000000\.tar: gzip-compressed; stpdist"):
            read(shard)
    _tar_of(shard, [("BZh0.frames.npy", _npy(0))])  # a key that begins as bzip2's magic does
    assert [key for key, _ in iter_shard(shard)] == ["BZh0"]


def test_verify_says_when_it_checked_no_bytes(tmp_path):
    """`inspect --verify` said "bytes … OK" of an index without SHA-256 or fingerprint (a
    user's own), having compared none."""
    import json

    from stpdist.cli import verify_split

    _split(tmp_path / "train", [3])
    assert verify_split(tmp_path / "train").endswith(": bytes, counts, dtypes, shapes, keys OK")
    path = tmp_path / "train" / "index.json"
    index = json.loads(path.read_text())
    for shard in index["shards"]:
        shard.pop("sha256"), shard.pop("fingerprint")
    path.write_text(json.dumps(index))
    assert verify_split(tmp_path / "train").endswith(
        ": counts, dtypes, shapes, keys OK (bytes not checked: the index records no SHA-256)"
    )


def test_shards_of_another_tool_with_the_documented_minimal_index_are_read(tmp_path):
    """docs/pages/guides/own-data.md, "Shards you already have": tars of Python's tarfile
    with the index the page gives (no bytes, fingerprint, sha256 or format_version) are
    verified and streamed; an index without a required entry names it (it said "missing 1
    required positional argument: 'bytes'", an entry never read back, now optional)."""
    import json

    from stpdist.cli import verify_split

    folder = tmp_path / "train"
    folder.mkdir()
    _tar_of(folder / "train-000000.tar", [(".DS_Store", b"x"), ("d/s0.frames.npy", _npy(0)),
                                          ("d/s0.json", b"{}"), ("d/s1.frames.npy", _npy(9))])  # fmt: skip
    _tar_of(folder / "train-000001.tar", [("s2.frames.npy", _npy(255))])
    index = {"split": "train", "shape": [2, 1, 2, 2], "dtype": "uint8", "value_scale": 255,
             "shards": [{"name": "train-000000.tar", "num_samples": 2},
                        {"name": "train-000001.tar", "num_samples": 1}]}  # fmt: skip
    (folder / "index.json").write_text(json.dumps(index))
    assert verify_split(folder).startswith("3 samples in 2 shards: counts, dtypes")
    stream = ShardEvalStream(folder, batch_size=2, num_input_frames=1, num_output_frames=1)
    batches = list(stream.iterate(LoaderContext()))
    assert [key for _, _, keys in batches for key in keys] == ["s0", "s1", "s2"]
    assert batches[1][0].max().item() == 1.0  # 255 / value_scale
    del index["shards"][1]["num_samples"]
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardFormatError, match=r"malformed index \(a shard entry lacks 'num_sa"):
        ShardEvalStream(folder, batch_size=2, num_input_frames=1, num_output_frames=1)
    index["shards"][1]["num_samples"] = 1
    del index["value_scale"]
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardFormatError, match=r"malformed index \(it lacks 'value_scale'\)"):
        ShardEvalStream(folder, batch_size=2, num_input_frames=1, num_output_frames=1)
    # variables written by hand as names (a traffic user's): said, not an AttributeError
    index["value_scale"], index["variables"] = 255, ["inflow", "outflow"]
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardFormatError, match=r"index.json: variables \['inflow', 'outflow'\]: "
                       r'expected a list of \{"name": …, "units": …\} objects'):  # fmt: skip
        ShardEvalStream(folder, batch_size=2, num_input_frames=1, num_output_frames=1)
    index["variables"] = None  # null: none, as before (another tool's writer may say so)
    (folder / "index.json").write_text(json.dumps(index))
    assert ShardEvalStream(folder, batch_size=2, num_input_frames=1, num_output_frames=1)


def test_tar_data_after_the_end_block_is_damage_not_a_wrong_index(tmp_path):
    """Two archives joined with `cat`, or a shard with blocks zeroed in its middle, ended at
    the first end-of-archive block: counted as complete, said as an index that got the
    count wrong, and refused even in skip mode; now said as what it is, and in skip mode
    the rest skipped and counted."""
    from stpdist.data.format import count_samples, iter_shard

    _split(tmp_path / "train", [6])
    shard = tmp_path / "train" / "train-000000.tar"
    data = shard.read_bytes()
    start = data.index(b"s00003.frames.npy")
    zeroed = data[:start] + bytes(2048) + data[start + 2048 :]  # s00003's header and data
    _tar_of(tmp_path / "a.tar", [("x0.frames.npy", _npy(0))])
    _tar_of(tmp_path / "b.tar", [("x1.frames.npy", _npy(1))])
    joined = (tmp_path / "a.tar").read_bytes() + (tmp_path / "b.tar").read_bytes()
    said = r"train-000000\.tar: tar data after its end-of-archive block \(byte \d+\): blocks"
    for damaged, keys in [(zeroed, ["s00000", "s00001", "s00002"]), (joined, ["x0"])]:
        shard.write_bytes(damaged)
        with pytest.raises(ShardFormatError, match=said):
            count_samples(shard)
        read = []
        with pytest.raises(ShardFormatError, match=said):
            read.extend(key for key, _ in iter_shard(shard))
        assert read == keys
    shard.write_bytes(zeroed)
    stream = ShardEvalStream(
        tmp_path / "train", batch_size=2, num_input_frames=1, num_output_frames=1,
        skip_bad=True,
    )  # fmt: skip
    seen = [key for _, _, batch in stream.iterate(LoaderContext()) for key in batch]
    assert seen == ["s00000", "s00001", "s00002"] and stream.bad_samples == 3
    shard.write_bytes(data)  # whole again: its padding of zeros is fine
    assert count_samples(shard) == (6, True) and len(list(iter_shard(shard))) == 6


def test_what_a_code_review_of_the_tar_reading_found(tmp_path, monkeypatch):
    """Joined archives read through a `pipe:` URL ended silently at the first end block (a
    local file said so); a truncated member with a long name was named by its header's
    first 100 characters in counting; a damaged header inside a shard whose name began as
    a compression's magic bytes (BZh…) was said to be a compressed shard; an index without
    `shards` said "malformed index ('shards')"."""
    import json

    from stpdist.data.format import count_samples, iter_shard, read_index

    _tar_of(tmp_path / "a.tar", [("x0.frames.npy", _npy(0))])
    _tar_of(tmp_path / "b.tar", [("x1.frames.npy", _npy(1))])
    joined = tmp_path / "j.tar"
    joined.write_bytes((tmp_path / "a.tar").read_bytes() + (tmp_path / "b.tar").read_bytes())
    with pytest.raises(ShardFormatError, match=r"tar data after its end-of-archive block: "):
        list(iter_shard(f"pipe:cat {joined}"))
    long = "d" * 120 + "/s1.frames.npy"
    with tarfile.open(tmp_path / "long.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("s0.frames.npy", _npy(0)), (long, _npy(1))]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    data = (tmp_path / "long.tar").read_bytes()
    (tmp_path / "long.tar").write_bytes(data[: data.rindex(b"\x93NUMPY") + 20])
    with pytest.raises(ShardFormatError, match=rf"truncated member {long}$"):
        count_samples(tmp_path / "long.tar")
    _tar_of(tmp_path / "bzh.tar", [("a0.frames.npy", _npy(0)), ("BZh1.frames.npy", _npy(1))])
    data = bytearray((tmp_path / "bzh.tar").read_bytes())
    data[data.index(b"BZh1.frames.npy") + 100] ^= 0xFF  # its mode field: the checksum fails
    (tmp_path / "bzh.tar").write_bytes(bytes(data))
    for read in (count_samples, lambda path: list(iter_shard(path))):
        with pytest.raises(ShardFormatError, match=r"corrupt tar header \(its checksum"):
            read(tmp_path / "bzh.tar")
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "index.json").write_text(json.dumps({"split": "train", "shape": [2, 1, 2, 2],
                                                   "dtype": "uint8", "value_scale": 255}))  # fmt: skip
    with pytest.raises(ShardFormatError, match=r"malformed index \(it lacks 'shards'\)"):
        read_index(folder)


class _Shards:
    """A local HTTP server of `root`'s files in a thread (as `python -m http.server`). Each
    request takes the next of `plan` (then "ok"): "ok" serves the file, "stall" its first
    700 bytes then nothing (a hung server), "cut" its first 700 then closes, "503"/"404"
    that status."""

    def __init__(self, root: Path, port: int = 0, plan: list[str] | None = None) -> None:
        import functools
        import http.server
        import threading
        import time

        plan = list(plan or [])
        self.requests = 0

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                shards.requests += 1
                what = plan.pop(0) if plan else "ok"
                if what in ("503", "404"):
                    self.send_error(int(what))
                    return
                self.what = what
                super().do_GET()

            def copyfile(self, source, outputfile) -> None:
                if self.what == "ok":
                    return super().copyfile(source, outputfile)
                outputfile.write(source.read(700))
                outputfile.flush()
                if self.what == "stall":
                    time.sleep(8)  # then the rest, too late
                self.close_connection = True

        shards = self
        handler = functools.partial(Handler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads, self.server.block_on_close = True, False
        self.port = self.server.server_address[1]
        # a short poll: shutdown waits for it (0.5 s by default, five servers a test)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_shards_over_http_retry_a_refused_connection_and_a_stalled_server_fails(
    tmp_path, monkeypatch
):
    """A review of training on a dataset bigger than RAM, streamed from a server: a server
    that stalled hung the training for ever without a word, and one restarting (a refused
    connection) ended it at once. curl now retries a refused connection (2 s apart) and gives
    up on a download that sends nothing for `URL_STALL_S`, naming the shard and why; only a
    download that failed before its first byte is tried again."""
    import shutil
    import socket
    import threading
    import time

    from stpdist.data import format as shard_format

    if shutil.which("curl") is None:  # the machine's tool, as webdataset's gopen needs it
        pytest.skip("curl is not installed: http(s) shards are read through it")

    keys = _split(tmp_path / "ds" / "train", [3, 2])
    template = "http://127.0.0.1:{port}/{split}/{name}"
    monkeypatch.setattr(shard_format, "URL_RETRY_DELAY_S", 1)

    def read(port: int) -> list[str]:
        stream = ShardEvalStream(tmp_path / "ds" / "train", batch_size=2, num_input_frames=1,
                                 num_output_frames=1, url_template=template.replace(
                                     "{port}", str(port)))  # fmt: skip
        return [key for _, _, batch in stream.iterate(LoaderContext()) for key in batch]

    server = _Shards(tmp_path / "ds")
    assert read(server.port) == keys
    server.close()

    # nothing listens yet: the server comes up a second later (a restart), and is read
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    late: list[_Shards] = []
    starter = threading.Timer(0.5, lambda: late.append(_Shards(tmp_path / "ds", port)))
    starter.start()
    try:
        assert read(port) == keys
    finally:
        starter.join()
        late[0].close()

    # a server that stops sending mid-shard: a failure within the stall time, named, not
    # tried again (curl's own retry appended a second copy of the shard to the first's start)
    monkeypatch.setattr(shard_format, "URL_STALL_S", 1)
    monkeypatch.setattr(shard_format, "URL_MIN_BYTES_S", 10**6)  # curl's window: seen at once
    for cut, status in (("stall", "status 28 (timed out: no connection in 30 s, or no data for 1 s)"),
                        ("cut", "status 18")):  # fmt: skip
        # every request stalls: on a loaded machine the server's thread can send nothing
        # within curl's 1 s window, a failure before the first byte, tried again (rightly);
        # seen twice in a row under load, where a third request was served whole
        server = _Shards(tmp_path / "ds", plan=[cut] * 6)
        began = time.monotonic()
        try:
            with pytest.raises(ShardFormatError) as raised:
                read(server.port)
        finally:
            server.close()
        assert time.monotonic() - began < 30, cut  # not URL_RETRY_S (300 s) of retries
        assert server.requests == 1 or (cut == "stall" and server.requests < 6), cut
        message = str(raised.value)
        assert f"127.0.0.1:{server.port}/train/train-000000.tar" in message
        assert f"curl exited with {status}" in message, message

    # a 503 (an overloaded gateway) is tried again and read; a 404 fails at once, said
    server = _Shards(tmp_path / "ds", plan=["503"])
    try:
        assert read(server.port) == keys and server.requests == 3  # 503, then both shards
    finally:
        server.close()
    server = _Shards(tmp_path / "ds", plan=["404"])
    try:
        with pytest.raises(ShardFormatError, match=r"status 22 \(the server answered with an "
                           r"HTTP error \(404: no such shard\?\)\)"):  # fmt: skip
            read(server.port)
        assert server.requests == 1
    finally:
        server.close()
