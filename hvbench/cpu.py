"""A CPU process set up the same way under every launcher: its share of the cores and a
memory allocator that does not hand pages back to the kernel between steps.

Threads: `accelerate launch` writes OMP_NUM_THREADS=1 into its workers'
environment when the user gave none (even for one process), and `torchrun`
does the same for more than one process per node, so a CPU run launched by
them used one thread per process whatever the machine had. A user's own
OMP_NUM_THREADS must still win, and a worker sees the same "1" either way; the
difference is in the launcher's own environment, which the kernel keeps as it
was when the launcher started (/proc/<parent>/environ): a value there is the
user's, a value only here is the launcher's default.

Memory: glibc returns freed blocks of a training step's activations to the
kernel (large blocks are mmapped, the heap top is trimmed) and faults fresh
zeroed pages in on the next step, thousands per step of a conv VAE, with CPU time
spent in the kernel that depends on what the process allocated before (so two
processes timing the same model would disagree). No block is mmapped (the heap
serves every size: raising the mmap threshold alone stops at glibc's 32 MiB cap,
under one 384-channel 32×32 activation of VDVAE at batch 16) and the heap top is
kept, so a step reuses the memory the previous one freed.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

LAUNCHER_VARS = ("LOCAL_WORLD_SIZE", "ACCELERATE_DYNAMO_BACKEND")  # torchrun, accelerate launch
# glibc mallopt parameters (malloc.h) and values: no block is mmapped (glibc still falls back
# to mmap when the heap cannot grow), and the heap is never trimmed below 1 GiB of free space
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MMAPPED_BLOCKS, TRIM_THRESHOLD = 0, 2**30


def cores() -> int:
    """CPUs this process may run on (its affinity mask: a Slurm or taskset allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parent_environ() -> dict[str, str] | None:
    """The launcher's environment as it started, plus its command line under the key ""."""
    try:
        proc = Path(f"/proc/{os.getppid()}")
        raw, cmdline = (proc / "environ").read_bytes(), (proc / "cmdline").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    env = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}
    env[""] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return env


def launcher_set_threads(env: dict[str, str], parent: dict[str, str] | None) -> bool:
    """True when OMP_NUM_THREADS=1 here is a launcher's default, not the user's choice.

    Only a launched worker (torchrun's LOCAL_WORLD_SIZE, accelerate's ACCELERATE_* variables)
    whose launcher started without OMP_NUM_THREADS, and was not given
    --num_cpu_threads_per_process, qualifies; an unreadable parent counts as the user's choice.
    """
    launched = any(name in env for name in LAUNCHER_VARS)
    return (
        launched
        and env.get("OMP_NUM_THREADS") == "1"
        and parent is not None
        and "OMP_NUM_THREADS" not in parent
        and "num_cpu_threads_per_process" not in parent.get("", "")
    )


def thread_share(env: dict[str, str], parent: dict[str, str] | None) -> int | None:
    """This process's share of the cores among its node's processes, when the launcher (not
    the user) chose its threads; None when they are the user's (or torch's own default)."""
    if not launcher_set_threads(env, parent):
        return None
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores() // max(1, local_world))


def keep_freed_memory() -> bool:
    """Fix glibc's malloc thresholds (see the module docstring); False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(
        libc.mallopt(M_MMAP_MAX, MMAPPED_BLOCKS)
        and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def configure() -> None:
    """Set this process's allocator and, where a launcher chose them, its torch threads
    (torch is imported only then: `hvbench leaderboard` and friends never need it)."""
    keep_freed_memory()
    threads = thread_share(dict(os.environ), _parent_environ())
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
