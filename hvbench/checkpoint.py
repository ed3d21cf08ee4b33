"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is Accelerate's `save_state` folder (model, optimizer, grad
scaler, and every process's python/numpy/torch RNG states) plus hvbench's own
files: the batch sampler (generator state, permutation, position) as
safetensors, the training state (step, skip counts, history) as JSON and, with
`train.ema_rate` > 0, the fp32 average of the weights as safetensors named like
the model's own (`EMA_FILE`, loadable as weights). They
are hvbench's files rather than objects registered with Accelerate, whose
custom states are unpickled with `weights_only=False`; everything here loads
with `weights_only=True` or is plain data, so a checkpoint from elsewhere can
fail to load but cannot run code.

A checkpoint is filled under a temporary name and renamed to `step-NNNNNNNN`
when complete, so a kill at any moment leaves the previous checkpoints intact;
the newest `keep` are kept.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors.torch import load_file, save_file

from hvbench.atomic import out_of_space, publish_folder, sync_folder
from hvbench.config import config_part
from hvbench.errors import UserError
from hvbench.options import changes_weights

FOLDER = "checkpoints"
STATE_FILE = "hvbench_state.json"
SAMPLER_FILE = "sampler.safetensors"
EMA_FILE = "ema.safetensors"
FORMAT = 1
_NAME = re.compile(r"step-([0-9]{8})")


def fingerprint(config: dict[str, Any]) -> str:
    """What determines the trained weights: the fields that change them
    (`options.changes_weights`; a field added later is left out at the value older runs meant,
    so their checkpoints still resume). A checkpoint records it, so one from another run is
    refused."""
    relevant = config_part(config, changes_weights)
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a run, oldest first. An empty step-N
    folder (left by a copy or a cleanup that stopped half-way) is none: a resume falls back to
    the newest checkpoint before it, while anything inside a step-N folder is checked whole."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    found = [(_NAME.fullmatch(p.name), p) for p in folder.iterdir() if p.is_dir()]
    return sorted((int(m.group(1)), p) for m, p in found if m and any(p.iterdir()))


def rng_file(folder: Path, process_index: int) -> Path:
    return folder / f"random_states_{process_index}.pkl"


class Checkpointer:
    """Saves and restores a run's training state under `run_dir/checkpoints/`."""

    def __init__(
        self,
        accelerator: Accelerator,
        run_dir: Path,
        keep: int,
        fingerprint: str,
        on_save: Callable[[int], None] = lambda step: None,
    ):
        self.accelerator, self.keep, self.fingerprint = accelerator, keep, fingerprint
        self.run_dir, self.folder = Path(run_dir), Path(run_dir) / FOLDER
        self.on_save = on_save  # called with the step once its checkpoint is published

    def latest(self) -> Path | None:
        found = checkpoints(self.run_dir)
        return found[-1][1] if found else None

    def save(
        self,
        step: int,
        state: dict[str, Any],
        sampler: dict[str, torch.Tensor],
        ema: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write a checkpoint of `step` atomically; every process must call this together. `ema`
        is the same on every process (each averages the same weights): the main one writes it."""
        acc = self.accelerator
        tmp, final = self.folder / f".tmp-step-{step:08d}", self.folder / f"step-{step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
            if acc.is_main_process:
                save_file({k: v.contiguous() for k, v in sampler.items()}, str(tmp / SAMPLER_FILE))
                if ema is not None:
                    save_file({k: v.detach().cpu() for k, v in ema.items()}, str(tmp / EMA_FILE))
                record = {
                    "format": FORMAT,
                    "step": step,
                    "world_size": acc.num_processes,
                    "fingerprint": self.fingerprint,
                    "train": state,
                }
                (tmp / STATE_FILE).write_text(json.dumps(record))
            acc.wait_for_everyone()
            if acc.is_main_process:
                sync_folder(tmp)
                publish_folder(tmp, final)
        except BaseException as err:
            # torch.save and safetensors report a full disk as RuntimeError or SafetensorError:
            # say what it is (ENOSPC), and free the half-written folder for the status write
            full = isinstance(err, Exception) and not isinstance(err, OSError) and out_of_space(tmp)
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from None
            raise
        if acc.is_main_process:
            for _, old in checkpoints(self.run_dir)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            self.on_save(step)
        acc.wait_for_everyone()
        return final

    def check(self, folder: Path) -> dict[str, Any]:
        """The checkpoint's state if it is one of this run's, for this many processes: checked
        before a resume writes anything."""
        acc = self.accelerator
        record = read_state(folder)
        if record.get("fingerprint") != self.fingerprint:
            raise UserError(f"checkpoint {folder} was written by a run with another config")
        if record.get("world_size") != acc.num_processes:
            raise UserError(
                f"checkpoint {folder} was written by {record.get('world_size')} processes; "
                f"resume it with as many (this is {acc.num_processes}): the batches and random "
                "streams are per process"
            )
        return record

    def restore(self, folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Load `folder` into the accelerator's model, optimizer, scaler and RNGs; return the
        training state and the sampler state. A missing, truncated or foreign checkpoint is a
        UserError naming it."""
        acc = self.accelerator
        record = self.check(folder)
        saved_rng = read_rng(folder, acc.process_index)
        try:
            sampler = load_file(str(folder / SAMPLER_FILE))
            acc.load_state(str(folder))
        except Exception as err:  # a truncated or foreign file fails in many types, all the file's
            raise UserError(f"checkpoint {folder} cannot be loaded: {_first_line(err)}") from None
        # Accelerate logs, rather than raises, when it cannot restore the random states
        if not torch.equal(torch.get_rng_state(), saved_rng["torch_manual_seed"]):
            raise UserError(f"checkpoint {folder}: the random states were not restored")
        return record["train"], sampler


def read_ema(folder: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's averaged weights (on CPU); a missing or damaged file is a UserError."""
    path = Path(folder) / EMA_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {folder} has no averaged weights ({EMA_FILE}) to continue")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types on a truncated file
        raise UserError(f"checkpoint {folder}: {EMA_FILE}: {_first_line(err)}") from None


def read_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's hvbench_state.json, checked to be one."""
    path = Path(folder) / STATE_FILE
    try:
        record = json.loads(path.read_bytes().decode())
    except FileNotFoundError:
        raise UserError(f"{folder} is not an hvbench checkpoint (no {STATE_FILE})") from None
    except (OSError, ValueError) as err:
        raise UserError(f"checkpoint {folder} is damaged: {STATE_FILE}: {err}") from None
    if not (
        isinstance(record, dict)
        and record.get("format") == FORMAT
        and isinstance(record.get("step"), int)
        and isinstance(record.get("train"), dict)
    ):
        raise UserError(f"{path} is not an hvbench checkpoint state (format {FORMAT})")
    return record


def read_rng(folder: Path, process_index: int) -> dict[str, Any]:
    """One process's saved RNG states, loaded with weights_only=True (numpy arrays allowed)."""
    path = rng_file(folder, process_index)
    try:
        states = accelerate_load(path, weights_only=True)
    except FileNotFoundError:
        raise UserError(
            f"checkpoint {folder} has no random states of process {process_index}"
        ) from None
    except Exception as err:  # torch.load raises many types on a damaged or foreign file
        raise UserError(f"checkpoint {folder}: {path.name}: {_first_line(err)}") from None
    if not isinstance(states, dict) or "torch_manual_seed" not in states:
        raise UserError(f"checkpoint {folder}: {path.name} holds no random states")
    return states


def set_rng(states: dict[str, Any]) -> None:
    """Put the python, numpy and torch (CPU and CUDA) generators where `states` left them."""
    random.setstate(states["random_state"])
    np.random.set_state(states["numpy_random_seed"])
    torch.set_rng_state(states["torch_manual_seed"])
    if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
        torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
