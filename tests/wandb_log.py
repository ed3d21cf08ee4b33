"""Read an offline W&B run's own log (`run-<id>.wandb`) back, as `wandb sync` would upload it.

wandb ≥ 0.20 no longer ships a Python reader of that file (its Go core writes and
reads it), so this is the format's few lines: a 7-byte `:W&B` header, then
LevelDB log blocks of 32 KiB whose chunks (7-byte header: checksum, length,
type FULL/FIRST/MIDDLE/LAST) join into records, each one of wandb's own
protobuf `Record`s, parsed with wandb's own message classes.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, LAST = 1, 4


def records(path: Path) -> Iterator[Any]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run log")
    position, parts = 7, []
    while position + CHUNK_HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < CHUNK_HEADER:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + CHUNK_HEADER])
        position += CHUNK_HEADER
        if (kind == 0 and length == 0) or position + length > len(data):
            break  # the end, or a chunk the writer has not finished yet
        parts.append(data[position : position + length])
        position += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def finished_records(path: Path, timeout: float = 30.0) -> list[Any]:
    """Every record, once the log holds the run's exit record: wandb's core process writes
    the log after `finish()` has returned in the run's process."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(records(path))  # the records written in full so far
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has no exit record after {timeout} s")
        time.sleep(0.2)


def history_and_summary(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The run's history rows and its final summary (later updates win), values decoded."""
    rows, summary = [], {}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({_name(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_name(i): json.loads(i.value_json) for i in record.summary.update})
    return rows, summary


def _name(item: Any) -> str:
    return item.key or "/".join(item.nested_key)
