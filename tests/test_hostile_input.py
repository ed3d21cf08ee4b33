"""Hostile input (issue 18): alias bombs, huge values, duplicate keys, sweep patterns that would
run str.format on anything, absurd counts and sizes, FIFOs and damaged dataset folders, and
`hvbench eval` on runs that cannot be re-evaluated all end in one line (exit 2), never a
traceback or a hang; whatever slips through reaches the CLI's guard, which prints one line and
keeps the traceback in a log file.

Most cases call `hvbench.cli.main` in this process; the guard, the FIFO (which used to hang)
and HVBENCH_DEBUG run as real subprocesses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hvbench.cli import main
from hvbench.config import resolve
from hvbench.disentanglement import dci_lasso
from hvbench.results import write_status
from tests.conftest import CONFIGS, run_cli

SMOKE = CONFIGS / "smoke" / "toy-vae.yaml"
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    """Run `hvbench ARGV` here; it must exit with `code` and one short line on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == code, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 600, err[:3000]
    return lines[0]


def smoke(**sections: dict) -> str:
    """The smoke config with some sections' keys replaced, as YAML text."""
    config = yaml.safe_load(SMOKE.read_text())
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return yaml.safe_dump(config)


def test_an_alias_bomb_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(smoke() + BOMB)  # 1 KB, 9**9 values written out
    line = one_line(capsys, ["run", "--config", str(path)])
    assert "expands to more than 100,000 values" in line


def test_a_huge_bad_value_is_named_not_printed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(smoke(train={"steps": "x" * 200_000}))
    line = one_line(capsys, ["run", "--config", str(path)])
    assert "'train.steps' expects int" in line and "xxx..." in line


def test_a_key_given_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(smoke().replace("  steps: 30\n", "  steps: 30\n  steps: 500\n"))
    assert "found duplicate key 'steps' (line" in one_line(capsys, ["run", "--config", str(path)])
    merged = tmp_path / "merged.yaml"  # a `<<:` merge overridden is no duplicate
    merged.write_text("base: &b {steps: 3}\ntrain:\n  <<: *b\n  steps: 4\n")
    with pytest.raises(Exception, match="unknown config section 'base'"):
        resolve("toy-corr", "vae", merged)


def test_task_given_twice_differently_is_refused(capsys: pytest.CaptureFixture) -> None:
    line = one_line(capsys, ["run", "--task", "toy-uncorr", "--config", str(SMOKE)])
    assert "--task toy-uncorr conflicts with task.name 'toy-corr'" in line
    assert resolve("toy-corr", "vae", SMOKE).task_name == "toy-corr"  # agreeing is fine


def test_a_noise_that_overflows_float32_is_a_bad_value(capsys: pytest.CaptureFixture) -> None:
    line = one_line(capsys, ["run", "--config", str(SMOKE), "--set", "task.noise=1e300"])
    assert "'task.noise' must be a finite number in [0, 10.0], got 1e+300" in line


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"config": "{0}"}, "has the field {0}; choose from: {task}, {model}"),
        ({"config": "{foo}"}, "has the field {foo}"),
        ({"config": "{"}, "is not a path pattern (Single '{' encountered"),
        ({"config": "{task.__class__}"}, "has the field {task.__class__}"),
        ({"seeds": 1_000_000_000_000}, "'seeds' must be a count in [1, 10,000]"),
        ({"name": "smoke\n"}, "sweep name 'smoke\\n' must be one path component"),
        ({"tasks": ["toy-corr", "toy-corr"]}, "'tasks' names 'toy-corr' twice"),
        ({"models": ["vae", "x" * 100_000]}, "unknown model 'xxx"),
    ],
)
def test_bad_sweep_files_are_one_line(
    change: dict, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = {**yaml.safe_load((CONFIGS / "sweeps" / "smoke.yaml").read_text()), **change}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    line = one_line(capsys, ["sweep", str(path), "--dry-run", "--out", str(tmp_path / "r")])
    assert fragment in line
    assert "output.run_id" not in line


def test_sizes_that_cannot_be_allocated_are_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = ["--set", f"output.root={tmp_path / 'results'}"]
    for size in ("task.n_train=1000000000000", "task.image_size=100000"):
        line = one_line(capsys, ["run", "--config", str(SMOKE), "--set", size, *out])
        assert "needs more memory than this machine can allocate" in line, line
        assert size.split("=")[0] in line
    assert not (tmp_path / "results").exists()


def test_an_empty_npz_says_it_is_empty(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "empty.npz"
    np.savez(data, images=np.zeros((0, 8, 8), np.float32))
    argv = ["run", "--config", str(CONFIGS / "smoke" / "file-vae.yaml")]
    line = one_line(capsys, [*argv, "--set", f"task.path={data}"])
    assert "empty.npz: images hold no image (shape (0, 1, 8, 8))" in line


def test_a_damaged_dataset_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import datasets

    folder = tmp_path / "hf"
    images = np.zeros((4, 1, 8, 8), np.uint8).tolist()
    datasets.Dataset.from_dict({"images": images}).save_to_disk(str(folder))
    argv = ["run", "--config", str(CONFIGS / "smoke" / "file-vae.yaml")]
    for text in ('{"broken', "[1, 2]"):
        (folder / "dataset_info.json").write_text(text)
        line = one_line(capsys, [*argv, "--set", f"task.path={folder}"])
        assert f"{folder} is a damaged 🤗 dataset folder" in line


def test_a_fifo_as_data_is_refused_not_read_forever(tmp_path: Path) -> None:
    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    argv = ["run", "--config", str(CONFIGS / "smoke" / "file-vae.yaml")]
    result = run_cli(*argv, "--set", f"task.path={fifo}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith("is neither a file nor a folder (a FIFO or device?)")


def fake_run(folder: Path, status: str) -> Path:
    """A run folder as a run leaves it (config, status, record, weights) without training."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(resolve(config_file=SMOKE).to_dict()))
    write_status(folder, status, 30, 30, "diverged at step 7" if status == "failed" else None)
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_eval_of_a_run_it_cannot_re_evaluate_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = tmp_path / "results" / "runs" / "toy-corr" / "vae"
    failed = fake_run(runs / "failed", "failed")
    line = one_line(capsys, ["eval", str(failed)])
    assert "failed (diverged at step 7); it has no final weights" in line
    assert "--resume" not in line  # a resume of a diverged run diverges again
    missing = fake_run(runs / "missing", "finished")
    assert "no metrics.json" in one_line(capsys, ["eval", str(missing)])
    malformed = fake_run(runs / "malformed", "finished")
    (malformed / "metrics.json").write_text("{}")
    (malformed / "metrics.v2.json").write_text('{"task": ')
    line = one_line(capsys, ["eval", str(malformed)])
    assert "metrics.v2.json: not JSON" in line and "move that file aside" in line


def test_a_10_mb_value_in_a_record_is_a_short_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = fake_run(tmp_path / "results" / "runs" / "toy-corr" / "vae" / "r", "finished")
    record = {"task": "toy-corr", "model": "vae", "run_id": "r", "run": {"eval_splits": ["test"]}}
    (run / "metrics.json").write_text(json.dumps({**record, "metrics": {"x": "y" * 10**7}}))
    capsys.readouterr()
    main(["leaderboard", "--root", str(tmp_path / "results")])
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) < 400 and "metric 'x' is 'yyy" in warning


def test_dci_drops_a_factor_constant_up_to_rounding() -> None:
    """A float64 factor holding one value has a std of ~1e-16 (its mean rounds): kept, it got
    R² = 1 with no importance and pulled completeness down by about 1/K."""
    g = torch.Generator().manual_seed(0)
    factors = torch.rand(1000, 3, generator=g, dtype=torch.float64)
    codes = (factors + 0.05 * torch.randn(1000, 3, generator=g, dtype=torch.float64)).float()
    constant = torch.full((1000, 1), 0.7, dtype=torch.float64)
    assert float(constant.std()) > 0  # what `std() > 0` used to keep
    plain = dci_lasso(codes, factors, [False] * 3)
    padded = dci_lasso(codes, torch.cat([factors, constant], 1), [False] * 4)
    assert padded.completeness == pytest.approx(plain.completeness)
    assert padded.disentanglement == pytest.approx(plain.disentanglement)
    assert torch.equal(padded.r2, plain.r2)


def test_the_guard_turns_anything_unforeseen_into_one_line_and_a_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "file").write_text("not a folder")
    argv = ["report", "--root", "results", "--out", str(tmp_path / "file" / "report.html")]
    cache = tmp_path / "cache"
    result = run_cli(*argv, cwd=tmp_path, env={"HVBENCH_CACHE": str(cache)})
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("hvbench: failed: ") and "HVBENCH_DEBUG=1 prints it" in line
    (log,) = (cache / "logs").iterdir()
    assert f"traceback in {log}" in line and "Traceback (most recent call last)" in log.read_text()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HVBENCH_DEBUG", "1")  # the exception itself, traceback and all
    with pytest.raises(FileExistsError):
        main(argv)
