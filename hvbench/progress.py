"""Progress for long work: a rich bar on a terminal, plain periodic lines otherwise.

Only the main process reports, so a multi-process run prints one bar, and a
log file (CI, a cluster job) gets readable lines instead of bar redraws.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

SHOWN = ("train/loss", "train/elbo_nats", "val/elbo_nats")


def summarise(record: dict[str, float]) -> str:
    return "  ".join(
        f"{k.split('/', 1)[1] if k.startswith('train/') else k}={record[k]:.2f}"
        for k in SHOWN
        if k in record
    )


class StepReporter:
    """Context manager reporting steps of long work; silent on non-main processes.

    Off a terminal, a line is printed with each record given and, with `lines`, at each
    1/`lines` of the total with the time left: a log of a long evaluation says how far it is.
    """

    def __init__(
        self,
        total: int,
        enabled: bool,
        description: str = "train",
        lines: int = 0,
        stream: TextIO | None = None,
    ):
        self.total, self.enabled, self.description = total, enabled, description
        self.stream = stream or sys.stdout
        self.interactive = enabled and self.stream.isatty()
        self.console = Console(file=self.stream)
        self.progress: Progress | None = None
        self.start = time.perf_counter()
        self.marks = [round(total * i / lines) for i in range(1, lines + 1)] if lines else []

    def __enter__(self) -> StepReporter:
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=self.total, info="")
        return self

    def update(self, step: int, record: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            info = summarise(record) if record else None
            self.progress.update(self.task, completed=step, **({"info": info} if info else {}))
        elif record:
            elapsed = time.perf_counter() - self.start
            print(
                f"[{self.description}] step {step}/{self.total}  {summarise(record)}  ({elapsed:.0f}s)",
                file=self.stream,
                flush=True,
            )
        elif self.marks and step >= self.marks[0]:
            while self.marks and step >= self.marks[0]:
                self.marks.pop(0)
            elapsed = time.perf_counter() - self.start
            left = elapsed * (self.total - step) / max(step, 1)
            print(
                f"[{self.description}] {step}/{self.total}  {elapsed:.0f}s, about {left:.0f}s left",
                file=self.stream,
                flush=True,
            )

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            self.progress.stop()
