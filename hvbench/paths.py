"""Where hvbench keeps prepared datasets: `$HVBENCH_CACHE`, else ~/.cache/hvbench."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("HVBENCH_CACHE", Path.home() / ".cache" / "hvbench")).expanduser()
