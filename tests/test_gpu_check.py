"""scripts/gpu_check.py, the one command for a GPU machine, exercised on its dry path
(a CPU, a narrow copy of the model): the same accelerate launches, bench matrix and
summary files, so the script is known to run through before it meets a GPU. The launches are
run for VDVAE (the model with EMA and the larger net); every model takes the same loop, so the
others' dry configs are checked to resolve and build, not launched again.
Also the README's entry point, `accelerate launch -m hvbench run` (each precision's run is
one), and the launcher's thread share: `accelerate launch` writes OMP_NUM_THREADS=1 for its
one process, and the runs must still use every core."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hvbench import cpu
from hvbench.config import resolve
from hvbench.run import build_model, load_task
from tests.conftest import REPO, load_script

gpu_check = load_script("gpu_check")


@pytest.mark.slow
def test_gpu_check_dry_path_writes_every_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "gpu"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # its launches take every core
    gpu_check.main(["--dry", "--out", str(out), "--models", "vdvae"])  # launches: subprocesses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry"] is True and set(summary["models"]) == {"vdvae"}
    for model, measured in summary["models"].items():
        assert set(measured["runs"]) == {"bf16", "fp16"}
        for run in measured["runs"].values():
            assert run["images_per_s"] > 0 and run["peak_memory_mb"] > 0
            assert run["gflop_per_image"] > 0 and run["fraction_of_measured_bf16_matmul"] > 0
        bench = json.loads((out / f"bench-{model}" / "bench.json").read_text())
        assert {c["precision"] for c in bench["cells"]} == {"no", "bf16"}
        # each bench cell's step by category of op, in the summary too
        assert len(measured["profile"]) == len(bench["cells"])
        for cell in measured["profile"]:
            assert sum(cell["shares"].values()) == pytest.approx(1.0)
            assert cell["shares"]["convolution"] > 0 and cell["ms_per_step"] > 0
        assert {c["model"] for c in bench["cells"]} == {model}
        for precision in ("bf16", "fp16"):
            path = out / "runs/runs/file" / model / precision / "metrics.json"
            record = json.loads(path.read_text())
            assert record["run"]["precision"] == precision
            assert record["run"]["device"].endswith(f", {cpu.cores()} threads)")
    # the VDVAE run trains as its CelebA config does: with the average of its weights
    assert summary["models"]["vdvae"]["runs"]["bf16"]["weights"] == "ema"
    table = (out / "summary.md").read_text()
    assert "dry run on a CPU" in table and "| vdvae | bf16 |" in table
    assert "Bench step time by category of op" in table and "| vdvae | no | 4 |" in table
    assert not (out / "celeba-shaped.npz").exists()  # data are never left in results/


@pytest.mark.parametrize("model", list(gpu_check.DRY_MODELS))
def test_every_models_dry_config_resolves_and_builds(model: str, tmp_path: Path) -> None:
    data = tmp_path / "celeba-shaped.npz"
    gpu_check.write_data(data, 16)
    config = tmp_path / f"{model}.yaml"
    gpu_check.write_config(config, model, data, tmp_path, steps=4, batch=8, eval_n=16, dry=True)
    cfg = resolve(config_file=config)
    assert cfg.model_name == model and cfg.train.steps == 4
    assert cfg.train.ema_rate == gpu_check.celeba_config(model)["train"].get("ema_rate", 0.0)
    net = build_model(cfg, load_task(cfg))
    assert sum(p.numel() for p in net.parameters()) > 0


def test_slurm_example_is_valid_bash() -> None:
    script = REPO / "scripts" / "slurm-multinode.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
