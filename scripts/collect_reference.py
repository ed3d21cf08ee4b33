"""Copy finished runs' records into `results/reference/` so they can be committed as they land.

A sweep's run folders hold checkpoints and weights (megabytes, never committed); what the
README and the board need is the record: `config.yaml`, `status.json`, every metrics file
(`metrics.json`, `metrics.vN.json`, `metrics.step-N.json`), `history.jsonl` and the figures,
each PNG re-encoded with a 256-colour palette and, when still larger than `--max-kb`, scaled
down until it fits, so `results/` stays small. Only finished runs are copied, and a run already
copied is copied again only where a file changed, so this can run after every finished run:

    python scripts/collect_reference.py SWEEP_ROOT [SWEEP_ROOT ...] --into results/reference

Each SWEEP_ROOT is a results root (it holds `runs/<task>/<model>/<run-id>/`); the runs land in
`INTO/runs/<task>/<model>/<run-id>/`, one board for every sweep (run ids start with the sweep's
name). With `--half-budget STEP` a finished run that kept the checkpoint of STEP and has not
been scored there yet is first evaluated at it (`hvbench eval RUN --checkpoint STEP
--set eval.iwae_k=0`: the histograms and activity at half the budget, without the IWAE).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

RECORD_FILES = ("config.yaml", "status.json", "history.jsonl")


def finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "status.json").read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def small_png(path: Path, max_kb: int) -> bytes:
    """The PNG re-encoded with a palette, scaled by 0.8 at a time until it is under max_kb."""
    image = Image.open(path).convert("RGB")
    while True:
        buffer = io.BytesIO()
        image.quantize(256).save(buffer, "PNG", optimize=True)
        if buffer.tell() <= max_kb * 1024 or min(image.size) < 64:
            return buffer.getvalue()
        image = image.resize((int(image.width * 0.8), int(image.height * 0.8)), Image.LANCZOS)


def write_if_changed(target: Path, data: bytes) -> bool:
    if target.is_file() and target.read_bytes() == data:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return True


def collect_run(run_dir: Path, target: Path, max_kb: int) -> int:
    """Copy one run's record; returns how many files were written."""
    written = 0
    names = [*RECORD_FILES, *(p.name for p in run_dir.glob("metrics*.json"))]
    for name in names:
        if (run_dir / name).is_file():
            written += write_if_changed(target / name, (run_dir / name).read_bytes())
    for png in sorted(run_dir.glob("figures*/*.png")):
        kept = target / png.parent.name / png.name
        if kept.is_file() and kept.read_bytes() == png.read_bytes():
            continue  # already this record's copy (a re-encoding would change its bytes)
        written += write_if_changed(kept, small_png(png, max_kb))
    return written


def evaluate_half_budget(run_dir: Path, step: int) -> None:
    kept = run_dir / "checkpoints" / f"step-{step:08d}"
    if not kept.is_dir() or (run_dir / f"metrics.step-{step:08d}.json").is_file():
        return
    command = [sys.executable, "-m", "hvbench", "eval", str(run_dir), "--checkpoint", str(step)]
    subprocess.run([*command, "--set", "eval.iwae_k=0"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="sweep results roots")
    parser.add_argument("--into", type=Path, default=Path("results/reference"))
    parser.add_argument("--max-kb", type=int, default=60, help="largest PNG kept (KB)")
    parser.add_argument("--half-budget", type=int, help="evaluate this checkpoint step first")
    args = parser.parse_args()
    for root in args.roots:
        for run_dir in sorted(p for p in (root / "runs").glob("*/*/*") if p.is_dir()):
            if not finished(run_dir):
                continue
            if args.half_budget:
                evaluate_half_budget(run_dir, args.half_budget)
            target = args.into / "runs" / run_dir.relative_to(root / "runs")
            written = collect_run(run_dir, target, args.max_kb)
            if written:
                print(f"{target}: {written} files")


if __name__ == "__main__":
    main()
