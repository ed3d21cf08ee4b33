"""Where a training step's time goes, by category of op: `hvbench bench --profile`.

A step's images/s says how far it is from the machine's conv rate, not why. torch's
profiler records every op's *self* time (its own time, without the ops it calls), on
the CPU or, for a CUDA device, the kernels each op launched; summing self times by
category splits the step with no time counted twice:

| category | ops (by name) |
|---|---|
| convolution | every op whose name holds `conv` (forward, both backward convolutions, oneDNN's and cuDNN's own ops) |
| matmul | `mm`, `addmm`, `bmm`, `baddbmm`, `matmul`, `linear` and oneDNN's linear |
| casts | `copy_`, `_to_copy`, `to`, `clone`, `contiguous`: dtype casts and layout copies, data moved without arithmetic |
| random | every op that draws random numbers (`uniform_`, `normal_`, `bernoulli_`, `random_`, `rand*`, `native_dropout`, …) |
| optimiser | every op run inside `Optimizer.step` or `zero_grad`, whatever its name |
| element-wise | every other op that reads or writes tensor data: activations and their backward, `add`, `mul`, `cat`, `where`, reductions, pooling, fills, and the fused kernels of `torch.compile` |
| other | allocation, views and reshapes, autograd's and Python's bookkeeping |

A compiled step's fused kernels (inductor's `cpp_fused_*` on a CPU, `triton_*` on a GPU)
are element-wise work whatever ops they fuse (a name may list `convolution_backward` as an
origin); on a CPU they appear in the profile only if inductor generated them with kernel
profiling on, which `hvbench bench --profile` turns on before it compiles.

The optimiser rule goes first (Adam's `mul_` is optimiser time, the model's is
element-wise), then the names in the order of the table. Casts, random numbers and
element-wise work are the non-convolution work issue 22 asks to keep small: no FLOP
needs them, and on a GPU they are memory-bound.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

CATEGORIES = (
    "convolution",
    "matmul",
    "casts",
    "random",
    "optimiser",
    "element-wise",
    "other",
)
NON_CONVOLUTION = ("casts", "random", "element-wise")  # what issue 22's targets bound
MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_mkldnn_linear", "mkldnn_linear"}
MATMUL |= {"addmv", "mv", "dot", "einsum"}
CASTS = {"copy_", "_to_copy", "to", "clone", "contiguous", "_copy_from", "copy"}
RANDOM = re.compile(
    r"^(uniform|normal|bernoulli|random|rand|randn|randint|randperm|randn_like|rand_like|"
    r"randint_like|multinomial|exponential|geometric|cauchy|log_normal|native_dropout|"
    r"dropout|feature_dropout|poisson)_?$"
)
# ops that touch no tensor data: allocation, views, metadata, scalars
NO_DATA = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view"}
NO_DATA |= {"_unsafe_view", "reshape", "as_strided", "as_strided_", "t", "transpose", "permute"}
NO_DATA |= {"expand", "expand_as", "slice", "select", "split", "split_with_sizes", "chunk"}
NO_DATA |= {"unbind", "unsqueeze", "squeeze", "flatten", "unflatten", "detach", "detach_"}
NO_DATA |= {"alias", "lift_fresh", "resize_", "set_", "result_type", "is_same_size", "item"}
NO_DATA |= {"_local_scalar_dense", "narrow", "view_as", "numpy_T", "is_nonzero", "resolve_conj"}
NO_DATA |= {"resolve_neg", "_reshape_alias", "unsafe_split", "unsafe_chunk", "squeeze_"}
NO_DATA |= {"unsqueeze_", "t_", "transpose_", "_has_compatible_shallow_copy_type"}
OPTIMISER = ("Optimizer.step", "Optimizer.zero_grad")
COMPILED = re.compile(r"(^triton_|cpp_fused|^fused_|_fused_)")  # torch.compile's own kernels


def category(name: str) -> str:
    """The category of an op by its profiler name (optimiser ops are told by their caller)."""
    if name.startswith(OPTIMISER):
        return "optimiser"
    if COMPILED.search(name):
        return "element-wise"
    if not name.startswith("aten::"):
        return "other"  # autograd nodes, record_function ranges, Python frames
    op = name.removeprefix("aten::")
    if "conv" in op:
        return "convolution"
    if op in MATMUL:
        return "matmul"
    if op in CASTS:
        return "casts"
    if RANDOM.match(op):
        return "random"
    if op in NO_DATA:
        return "other"
    return "element-wise"


def _under_optimiser(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(OPTIMISER):
            return True
        parent = parent.cpu_parent
    return False


def profile_steps(step: Callable[[], None], steps: int, device: torch.device) -> dict[str, Any]:
    """`steps` calls of `step` under torch's profiler: per category, milliseconds per step
    and the share of the step, with the ops that cost most. On a CUDA device the time is
    the kernels' (device self time, attributed to the op that launched them), elsewhere the
    CPU's; the caller runs `step` a few times first, so no one-off setup is counted."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    per_category = dict.fromkeys(CATEGORIES, 0.0)
    per_op: dict[tuple[str, str], float] = {}
    for event in prof.events():
        if event.device_type != DeviceType.CPU:
            continue  # a kernel's own event: its time is already its launching op's
        micros = event.self_device_time_total if cuda else event.self_cpu_time_total
        if micros <= 0:
            continue
        kind = "optimiser" if _under_optimiser(event) else category(event.name)
        per_category[kind] += micros
        per_op[event.name, kind] = per_op.get((event.name, kind), 0.0) + micros
    total = sum(per_category.values()) or 1.0
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:10]
    return {
        "clock": "cuda" if cuda else "cpu",
        "steps": steps,
        "ms_per_step": total / steps / 1000,
        "ms": {k: v / steps / 1000 for k, v in per_category.items()},
        "shares": {k: v / total for k, v in per_category.items()},
        "non_convolution_share": sum(per_category[k] for k in NON_CONVOLUTION) / total,
        "top_ops": [
            {"op": name, "category": kind, "share": micros / total} for (name, kind), micros in top
        ],
    }
