"""Fused pointwise regions: a recurrent cell's gate arithmetic as one kernel forward and
one kernel backward instead of 10–40 separate pointwise ops.

A recurrent backbone spends most of its GPU step launching small kernels: each cell step
runs its convolutions and then a dozen sigmoid/tanh/mul/add ops, each with its backward
(issue 22: ConvLSTM dispatches ~2 500 kernel-launching ops per training step, most of them
gate arithmetic). `@pointwise` marks such a region — a function of tensors (and float
constants) that returns new tensors — and, when fusion is on, runs it as a pair of custom
operators, `stpdist::<name>` and `stpdist::<name>_backward`, each implemented by
`torch.compile` (inductor: one Triton kernel on a GPU, one vectorised C++ loop on a CPU;
a region with reductions, such as a peephole weight's gradient summed over the batch, may
become a few kernels). The backward recomputes the region's forward inside its own kernel
(`torch.func.vjp`) instead of saving a dozen intermediates: less memory, one launch.

When fusion is off, under `torch.compile` of the whole model (which fuses the region itself)
and under tracing/export, the function runs as written: exactly today's ops.

Fusion is switched per forward pass with `fusion(True)` (the Forecaster does it from
`model.fused_kernels`). `STPDIST_FUSED_BACKEND` names another `torch.compile` backend for
the bodies (`aot_eager`: the same custom ops, traced and run op by op, without code
generation), to tell a compiler fault from a region's own, and for the test suite, which
compiles with inductor only where the kernel itself is under test (a cold inductor compile
is seconds of C++ per region on a CPU). Outputs equal the op-by-op region's to float
rounding (inductor evaluates the same expressions in one pass; the order of a batch
reduction may differ); tests/test_fused.py holds each backbone to ≤1e-6 relative (MAU and
PhyDNet in float64: in float32 their ill-conditioned gradients, and PhyDNet's outputs at
its recipe sizes, move by 1e-5 under any change of operation order).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

log = logging.getLogger(__name__)

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("stpdist_fusion", default=False)
# set once when the compiler fails here: fusion stays off after it
_BROKEN: list[str] = []
BACKEND_ENV = "STPDIST_FUSED_BACKEND"  # the bodies' torch.compile backend; inductor unset
# the dispatch keys at the region's call site (autocast included), restored in its body
_CALLER_KEYS: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "stpdist_fusion_keys", default=None
)


_MODE_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.Python) | torch._C.DispatchKeySet(
    torch._C.DispatchKey.PythonTLSSnapshot
)


def _keys() -> tuple:
    """The thread's dispatch keys, less those of Python modes (the body runs without them)."""
    include = torch._C._dispatch_tls_local_include_set() - _MODE_KEYS
    return include, torch._C._dispatch_tls_local_exclude_set()


@contextlib.contextmanager
def _from_here() -> Iterator[None]:
    token = _CALLER_KEYS.set(_keys())
    try:
        yield
    finally:
        _CALLER_KEYS.reset(token)


def fusion(on: bool) -> contextlib.AbstractContextManager[None]:
    """Fused regions run as fused kernels inside this block when `on` (see module doc).
    Under `torch.compile` of the caller it does nothing (the compiler fuses the regions
    itself, and it cannot trace a context variable)."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return _switched(bool(on))


@contextlib.contextmanager
def _switched(on: bool) -> Iterator[None]:
    token = _ACTIVE.set(on)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def fusion_active() -> bool:
    """Whether a `@pointwise` region called now would run as a fused kernel."""
    if torch.compiler.is_compiling():  # first: dynamo cannot trace a context variable
        return False
    if not _ACTIVE.get() or _BROKEN:
        return False
    return not (
        torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
    )


class _Region:
    """One fused region: its function, its two custom ops and their compiled bodies."""

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        conv_outputs: Sequence[int] = (),
        conv_copies: Sequence[int] = (),
    ) -> None:
        self.fn = fn
        self.name = name
        self.conv_outputs = tuple(conv_outputs)
        self.conv_copies = tuple(conv_copies)
        self._bodies: dict[tuple[str, str], Callable[..., Any]] = {}  # (which, backend) →
        self.op = self._define_forward()
        self.op_backward = self._define_backward()
        region = self

        class Function(torch.autograd.Function):
            # a Python autograd node around the two ops (custom_op's own autograd
            # registration runs the backward with dispatch keys under which functorch's
            # vjp cannot take views)
            @staticmethod
            def forward(ctx: Any, scalars: list, lower: Any, *tensors: torch.Tensor) -> Any:
                with _from_here():
                    out = region.op(list(tensors), scalars, lower)
                ctx.save_for_backward(*tensors)
                ctx.scalars, ctx.lower = scalars, lower
                ctx.set_materialize_grads(False)  # unused outputs: None, zero in the kernel
                return tuple(out)

            @staticmethod
            def backward(ctx: Any, *grads: torch.Tensor) -> Any:
                tensors = list(ctx.saved_tensors)
                with _from_here():
                    grads = region.op_backward(tensors, list(grads), ctx.scalars, ctx.lower)
                return (None, None, *grads)

        self.function = Function

    # the region as a tuple-returning function of (tensors..., scalars...), its outputs
    # that only convolutions read in dtype `lower` (None: as computed)
    def _call(
        self, tensors: Sequence[torch.Tensor], scalars: Sequence[float], lower: Any = None
    ) -> list:
        out = self.fn(*tensors, *scalars)
        out = list(out) if isinstance(out, (tuple, list)) else [out]
        if lower is not None:
            out += [conv_read(out[i], lower) for i in self.conv_copies]
            for i in self.conv_outputs:
                out[i] = conv_read(out[i], lower)
        return out

    def _vjp(
        self,
        tensors: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor | None],
        scalars: Sequence[float],
        lower: Any = None,
    ) -> list:
        outputs, pull = torch.func.vjp(lambda *xs: tuple(self._call(xs, scalars, lower)), *tensors)
        # an unused output's gradient is None: zero, created inside the kernel
        grads = [torch.zeros_like(o) if g is None else g for g, o in zip(grads, outputs)]
        return list(pull(tuple(grads)))

    def _compiled(self, which: str, backend: str, args: tuple) -> Callable[..., Any]:
        """The body compiled for the signature of `args` (see `_signature`)."""
        key = (which, backend, _signature(args))
        body = self._bodies.get(key)
        if body is None:
            method, name = (
                (self._call, self.name)
                if which == "forward"
                else (self._vjp, self.name + "_backward")
            )
            # static shapes, and a code object (so a dynamo cache and recompile limit) of
            # its own per signature: with one shared body, each dtype, autocast state and
            # batch size recompiled it, shapes then turned symbolic, and on a GPU each
            # gradient's storage offset (a slice of the gradient over time) became a guard
            # of its own, until dynamo's limit (8) stopped fusion for the process
            body = torch.compile(
                _own_code(method, name), fullgraph=True, dynamic=False, backend=backend
            )
            self._bodies[key] = body
        return body

    def _run(self, which: str, *args: Any) -> list:
        """The compiled body; the op-by-op one (once, with a warning; fusion then stays
        off) where this machine cannot compile (no C++ compiler, no Triton)."""
        eager = self._call if which == "forward" else self._vjp
        if _BROKEN:
            return eager(*args)
        backend = _backend()  # a bad setting is an error, not a compiler failure
        try:
            # modes above (an op counter, a profiler's) see this op as one; its body runs
            # without them, as a compiled kernel does (dynamo refuses to run under a mode)
            # and it runs under the caller's dispatch keys: a mode's handler runs its ops under
            # others, on which the compiled body would recompile and fail
            include, exclude = _CALLER_KEYS.get() or _keys()
            with _disable_current_modes(), torch._C._ForceDispatchKeyGuard(include, exclude):
                return self._compiled(which, backend, args)(*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure: run unfused
            if not _BROKEN:
                log.warning(
                    "fused kernels: torch.compile failed for %s (%s); running the op-by-op "
                    "gate arithmetic from here on",
                    self.name,
                    str(error).splitlines()[0] if str(error) else type(error).__name__,
                )
                _BROKEN.append(self.name)
            return eager(*args)

    def _define_forward(self) -> Any:
        region = self

        @torch.library.custom_op(f"stpdist::{self.name}", mutates_args=())
        def op(
            tensors: list[torch.Tensor], scalars: list[float], lower: torch.dtype | None
        ) -> list[torch.Tensor]:
            return _distinct(
                region._run("forward", [t.detach() for t in tensors], scalars, lower), tensors
            )

        @op.register_fake
        def _(tensors, scalars, lower):  # noqa: ANN001, ANN202
            return [t.clone() for t in region._call(tensors, scalars, lower)]

        return op

    def _define_backward(self) -> Any:
        region = self

        @torch.library.custom_op(f"stpdist::{self.name}_backward", mutates_args=())
        def op_backward(
            tensors: list[torch.Tensor],
            grads: list[torch.Tensor | None],
            scalars: list[float],
            lower: torch.dtype | None,
        ) -> list[torch.Tensor]:
            # saved inputs may still require grad: the compiled vjp wants plain tensors
            tensors = [t.detach() for t in tensors]
            grads = [None if g is None else _dense(g.detach()) for g in grads]
            given = [g for g in grads if g is not None]
            return _distinct(
                region._run("backward", tensors, grads, scalars, lower), tensors + given
            )

        @op_backward.register_fake
        def _(tensors, grads, scalars, lower):  # noqa: ANN001, ANN202
            return [torch.empty_like(t) for t in tensors]

        return op_backward

    def __call__(self, *tensors: torch.Tensor, scalars: Sequence[float] = ()) -> Any:
        lower = conv_dtype(tensors[0].device) if self.conv_outputs or self.conv_copies else None
        if not fusion_active():
            out = self._call(tensors, scalars, lower)
        else:
            out = self.function.apply([float(s) for s in scalars], lower, *tensors)
        return out[0] if len(out) == 1 and not self.conv_copies else tuple(out)


_CHECKED_BACKENDS = {"inductor"}  # looked up once each: this runs at every region call


def _backend() -> str:
    """The bodies' torch.compile backend: `STPDIST_FUSED_BACKEND`, inductor when unset."""
    name = os.environ.get(BACKEND_ENV) or "inductor"
    if name not in _CHECKED_BACKENDS:
        known = torch._dynamo.list_backends(exclude_tags=())
        if name not in known:
            raise ValueError(
                f"{BACKEND_ENV}={name} is not a torch.compile backend; known: "
                + ", ".join(sorted(known))
            )
        _CHECKED_BACKENDS.add(name)
    return name


def _signature(args: tuple) -> tuple:
    """What a compiled body's guards check, as a key: each tensor's dtype, device, shape and
    strides (not its storage offset, which static-shape code does not depend on), which
    gradients are None, the scalars, and the dispatch state the body runs under (autocast
    and grad mode). A new signature gets a body of its own instead of recompiling one."""
    parts: list = []
    for arg in args:
        for item in arg if isinstance(arg, (list, tuple)) else (arg,):
            if isinstance(item, torch.Tensor):
                parts.append((item.dtype, item.device, tuple(item.shape), item.stride()))
            else:
                parts.append(item)  # None (an unused output's gradient) or a scalar
    include, exclude = _CALLER_KEYS.get() or _keys()
    state = (
        include.raw_repr(),
        exclude.raw_repr(),
        torch.is_grad_enabled(),
        torch.get_autocast_dtype("cpu"),
        torch.get_autocast_dtype("cuda"),
    )
    return (*parts, state)


def _own_code(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`method` (bound) with a code object of its own: dynamo caches compiled code per code
    object, and every region's `_call` would otherwise share one cache (and its recompile
    limit, 8 by default: the ninth region would fail to compile)."""
    func = method.__func__
    clone = types.FunctionType(
        func.__code__.replace(co_name=name), func.__globals__, name, func.__defaults__
    )
    return types.MethodType(clone, method.__self__)


def _dense(grad: torch.Tensor) -> torch.Tensor:
    """An incoming gradient as the compiled backward takes it: an expanded one (stride 0)
    made contiguous, since each stride pattern would be a signature of its own; a dense one,
    channels-first or channels-last (`trainer.channels_last`), as it is: a copy into the
    other layout would be a kernel of its own, and the convolution that reads the result
    would convert it back."""
    if grad.dim() == 4 and grad.is_contiguous(memory_format=torch.channels_last):
        return grad
    return grad.contiguous()


def _distinct(outputs: list, inputs: Sequence[torch.Tensor]) -> list:
    """`outputs`, each cloned where it shares storage with an input or an earlier output (a
    custom op's outputs must not alias: e.g. the gradient of `a + b` is the same tensor
    for a and b)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs}
    distinct = []
    for t in outputs:
        ptr = t.untyped_storage().data_ptr()
        distinct.append(t.clone() if ptr in seen else t)
        seen.add(ptr)
    return distinct


def conv_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype a convolution reads its float32 input in on `device` now: autocast's
    lower precision where autocast is on (None: off, convolutions read float32)."""
    kind = device.type
    try:
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
    except RuntimeError:  # a device autocast knows nothing of (meta: shapes only)
        pass
    return None


def conv_read(tensor: torch.Tensor, lower: torch.dtype | None = None) -> torch.Tensor:
    """`tensor` as a convolution under autocast reads it: a float32 tensor in autocast's
    dtype (`lower`, else `conv_dtype` of its device); any other tensor as it is (autocast
    leaves a float64 convolution in float64)."""
    lower = lower if lower is not None else conv_dtype(tensor.device)
    if lower is None or tensor.dtype != torch.float32:
        return tensor
    return tensor.to(lower)


def conv_cat(tensors: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """`torch.cat(tensors, dim)` for a convolution to read. Under autocast, when some parts
    are already in the convolution's dtype, the float32 parts are cast to it before the
    cat: one cast each, instead of type promotion casting every lower part up to float32
    and the convolution casting the whole cat back down. The convolution reads the same
    values, and the gradients are the same."""
    lower = conv_dtype(tensors[0].device)
    if lower is not None:
        wide = sum(t.dtype == torch.float32 for t in tensors)
        if 0 < wide <= sum(t.dtype == lower for t in tensors):
            tensors = [t.to(lower) if t.dtype == torch.float32 else t for t in tensors]
    return torch.cat(list(tensors), dim)


def pointwise(
    fn: Callable[..., Any] | None = None,
    *,
    conv_outputs: Sequence[int] = (),
    conv_copies: Sequence[int] = (),
) -> Any:
    """Marks `fn(*tensors, *scalars)` as a fused region (see module doc). Call it as
    `region(t1, t2, ..., scalars=(1.0,))`; it returns what `fn` returns (one tensor or a
    tuple). `fn` must compute only from its arguments (no module state, no randomness) and
    return tensors; its ops must have meta kernels (all pointwise/reduction ops do).

    `conv_outputs`: the indices of outputs that only convolutions read (a cell's hidden
    state that feeds its own and the next layer's gate convolutions, say). Under autocast
    they are returned in autocast's dtype, the cast each convolution would make, made once
    and, fused, inside the region's kernel: a float32 output read by two convolutions
    costs two cast kernels forward and two backward. The convolutions read the same values
    as before; the gradients of such an output's readers add up in that dtype instead of
    float32 (as for any tensor autocast makes). Without autocast nothing changes.
    `conv_copies`: outputs that arithmetic reads too (a cell state): under autocast a copy
    of each in autocast's dtype is returned after the outputs, for the convolutions that
    read it (nothing is added without autocast: see `conv_dtype`); such a region always
    returns a tuple."""
    if fn is None:
        return lambda f: pointwise(f, conv_outputs=conv_outputs, conv_copies=conv_copies)
    module = fn.__module__.rsplit(".", 1)[-1]
    return _Region(fn, f"{module}_{fn.__name__}", conv_outputs, conv_copies)
