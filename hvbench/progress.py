"""Progress for long work: a rich bar on a terminal, plain periodic lines otherwise.

Only the main process reports, so a multi-process run prints one bar, and a
log file (CI, a cluster job) gets readable lines instead of bar redraws.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType

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
    """Context manager reporting training steps; silent on non-main processes."""

    def __init__(self, total: int, enabled: bool, description: str = "train"):
        self.total, self.enabled, self.description = total, enabled, description
        self.interactive = enabled and sys.stdout.isatty()
        self.console = Console()
        self.progress: Progress | None = None
        self.start = time.perf_counter()

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
                flush=True,
            )

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            self.progress.stop()
