"""Iterate one training epoch of a split folder; print peak RSS in MB (for test_stream)."""

import resource
import sys

from stpdist.data.stream import LoaderContext, ShardTrainStream

stream = ShardTrainStream(
    sys.argv[1], batch_size=8, num_input_frames=10, num_output_frames=10, shuffle_buffer=64
)
batches = sum(1 for _ in stream.iterate(LoaderContext(num_workers=int(sys.argv[2])), 0))
assert batches == stream.batches_per_epoch(LoaderContext(num_workers=int(sys.argv[2])))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
