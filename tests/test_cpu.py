"""hvbench.cpu's allocator setting: a training step's freed activations are not faulted
in again on the next step."""

from __future__ import annotations

import os
import subprocess
import sys

STEPS = """
import resource, sys, torch
from hvbench import cpu
from hvbench.bench import Cell, Stepper
from hvbench.config import build
from hvbench.registry import MODELS
from hvbench.task import TaskSpec
if sys.argv[1] == "kept":
    assert cpu.keep_freed_memory()
torch.set_num_threads(1)
spec = TaskSpec((1, 64, 64), "bernoulli")  # the Burgess et al. conv VAE at batch 64
entry = MODELS.get("vae")
model = entry.build(build(entry.config, {}, "model"), spec)
step = Stepper(model, spec, Cell("vae", None, "no", 64, "plain", "train", spec.shape), torch.device("cpu"))
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


# glibc's default thresholds, pinned: left adaptive, glibc raises them to the size of the
# first large block a process frees, so whether a default run faults depended on its
# allocation history (one CI run saw 0.2 faults a step). hvbench's mallopt overrides both.
GLIBC_DEFAULTS = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def faults_per_step(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", STEPS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GLIBC_DEFAULTS},
    )
    return float(done.stdout.split()[-1])


def test_kept_memory_is_not_faulted_in_on_every_step() -> None:
    """glibc's defaults fault in over ten thousand 4 KiB pages a step here (tens of MiB);
    with the thresholds fixed a warmed-up step reuses the pages it freed."""
    default, kept = faults_per_step("default"), faults_per_step("kept")
    assert default > 2000, default
    assert kept < default / 20, (kept, default)
