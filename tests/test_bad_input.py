"""Bad input through the CLI: exit 2, one line on stderr naming the bad value, nothing written.

Most cases call `hvbench.cli.main(argv)` in this process (fast); a handful run as real
subprocesses. "Nothing written" is checked on the whole test folder (the results root, the
working directory where a `..` run id would land, the inputs) and on the absolute path an
absolute run id points at.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from hvbench.atomic import write_json
from hvbench.cli import main
from hvbench.config import resolve
from hvbench.registry import MODELS
from hvbench.results import write_status
from hvbench.task import TaskSpec
from tests.conftest import CONFIGS, run_cli

SMOKE = str(CONFIGS / "smoke" / "toy-vae.yaml")
FILE_SMOKE = str(CONFIGS / "smoke" / "file-vae.yaml")
# a fixed name: parallel test workers must collect the same test ids
ABSOLUTE = "/tmp/hvbench-absolute-run-id-never-created"


def fake_run(folder: Path, status: str, weights: bytes | None = None) -> None:
    """A run folder as a run leaves it (config, status, record), without training one."""
    folder.mkdir(parents=True)
    config = resolve(config_file=Path(SMOKE)).to_dict()
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_status(folder, status, 30 if status == "finished" else 10, 30)
    if status == "finished":
        record = {"task": "toy-corr", "model": "vae", "run_id": folder.name, "metrics": {}}
        write_json(folder / "metrics.json", {**record, "run": {"eval_splits": ["test"]}})
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    (folder / ".lock").touch()


def fake_checkpoint(run: Path, state: dict | None) -> None:
    folder = run / "checkpoints" / "step-00000010"
    folder.mkdir(parents=True)
    if state is None:  # a folder that holds something, but no checkpoint (an empty one is none)
        (folder / "model.safetensors").write_bytes(b"")
    else:
        state = {"format": 1, "step": 10, "world_size": 1, "train": {}, **state}
        (folder / "hvbench_state.json").write_text(json.dumps(state))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every bad file a user might hand over, and run folders in each state."""
    root = tmp_path_factory.mktemp("bad-input")
    (root / "work").mkdir()
    data = root / "inputs"
    data.mkdir()
    (data / "binary.yaml").write_bytes(bytes(range(256)))
    (data / "a-file").write_text("not a folder\n")
    np.savez(data / "one-pixel.npz", images=np.random.rand(64, 1, 1) > 0.5)
    np.savez(data / "wide.npz", images=np.random.randint(0, 256, (64, 3, 1000), dtype=np.uint8))
    with zipfile.ZipFile(data / "not-npy.npz", "w") as archive:
        archive.writestr("images.npy", b"a text file, not an array")
    header = io.BytesIO()
    huge = {"descr": "<f8", "fortran_order": False, "shape": (2**24, 2**24, 6)}  # 12 PiB
    np.lib.format.write_array_header_1_0(header, huge)
    with zipfile.ZipFile(data / "huge.npz", "w") as archive:
        archive.writestr("images.npy", header.getvalue())
    model = MODELS.get("vae").build(resolve(config_file=Path(SMOKE)).model, TaskSpec((1, 32, 32), "gaussian"))
    save_file(model.state_dict(), str(data / "weights.safetensors"))
    good = (data / "weights.safetensors").read_bytes()
    save_file({"encoder.weight": torch.zeros(3)}, str(data / "foreign.safetensors"))
    runs = root / "work" / "results" / "runs" / "toy-corr" / "vae"
    fake_run(runs / "interrupted", "interrupted")
    for name, state in (("foreign-checkpoint", {"fingerprint": "0"}), ("no-checkpoint", None)):
        fake_run(runs / name, "interrupted")
        fake_checkpoint(runs / name, state)
    fake_run(runs / "finished", "finished", good)
    fake_run(runs / "no-weights", "finished")
    fake_run(runs / "truncated", "finished", good[: len(good) // 2])
    fake_run(runs / "foreign", "finished", (data / "foreign.safetensors").read_bytes())
    return root


RUN = ["run", "--config", SMOKE]
FILE = ["run", "--config", FILE_SMOKE, "--set"]
RUNS = "results/runs/toy-corr/vae"
# (argv, a fragment of the one error line: it names the bad value); {in} = the inputs folder
CASES = [
    ([*RUN, "--set", "output.run_id=../../../../ESCAPED"], "'output.run_id' got '../../../../ESCAPED'"),
    ([*RUN, "--set", f"output.run_id={ABSOLUTE}"], f"'output.run_id' got '{ABSOLUTE}'"),
    ([*RUN, "--set", "output.run_id=a/b"], "'output.run_id' got 'a/b'"),
    ([*RUN, "--set", "output.run_id=.hidden"], "'output.run_id' got '.hidden'"),
    ([*RUN, "--set", "output.run_id=a\\b"], "'output.run_id' got 'a\\\\b'"),
    ([*RUN, "--set", "output.run_id=a..b"], "'output.run_id' got 'a..b': '..' is not allowed"),
    ([*RUN, "--set", "output.run_id="], "'output.run_id' got ''"),
    ([*RUN, "--set", "train.steps=0"], "'train.steps' must be an integer >= 1, got 0"),
    ([*RUN, "--steps", "-5"], "'train.steps' must be an integer >= 1, got -5"),
    ([*RUN, "--set", "train.batch_size=0"], "'train.batch_size' must be an integer >= 1, got 0"),
    ([*RUN, "--set", "train.epochs=-3"], "'train.epochs' must be a finite number > 0, got -3.0"),
    ([*RUN, "--set", "train.eval_every=0"], "'train.eval_every' must be an integer >= 1, got 0"),
    ([*RUN, "--set", "train.log_every=0"], "'train.log_every' must be an integer >= 1, got 0"),
    ([*RUN, "--set", "train.val_examples=0"], "'train.val_examples' must be an integer >= 1"),
    ([*RUN, "--set", "train.checkpoint_every=0"], "'train.checkpoint_every' must be an integer >= 1"),
    ([*RUN, "--set", "train.keep_checkpoints=0"], "'train.keep_checkpoints' must be an integer >= 1"),
    ([*RUN, "--set", "train.lr=nan"], "'train.lr' must be a finite number > 0, got nan"),
    ([*RUN, "--set", "train.lr=inf"], "'train.lr' must be a finite number > 0, got inf"),
    ([*RUN, "--set", "train.lr=0"], "'train.lr' must be a finite number > 0, got 0.0"),
    ([*RUN, "--set", "train.lr=-1e-3"], "'train.lr' must be a finite number > 0, got -0.001"),
    ([*RUN, "--set", "train.beta=nan"], "'train.beta' must be a finite number >= 0, got nan"),
    ([*RUN, "--set", "train.beta=-1"], "'train.beta' must be a finite number >= 0, got -1.0"),
    ([*RUN, "--set", "train.w_rec=0"], "'train.w_rec' must be a finite number > 0, got 0.0"),
    ([*RUN, "--set", "train.free_bits=-0.5"], "'train.free_bits' must be a finite number >= 0"),
    ([*RUN, "--set", "train.grad_clip=inf"], "'train.grad_clip' must be a finite number >= 0, got inf"),
    ([*RUN, "--set", "train.skip_threshold=-1"], "'train.skip_threshold' must be a finite number >= 0"),
    ([*RUN, "--set", "train.max_skip_fraction=1.5"], "'train.max_skip_fraction' must be a fraction in [0, 1], got 1.5"),
    ([*RUN, "--seed", "-1"], "'train.seed' must be an integer in [0, 2**32), got -1"),
    ([*RUN, "--set", "eval.batch_size=0"], "'eval.batch_size' must be an integer >= 1, got 0"),
    ([*RUN, "--set", "eval.max_examples=0"], "'eval.max_examples' must be an integer >= 1, got 0"),
    ([*RUN, "--set", "eval.iwae_k=-1"], "'eval.iwae_k' must be an integer >= 0, got -1"),
    ([*RUN, "--set", "eval.au_samples=0"], "'eval.au_samples' must be an integer >= 2, got 0"),
    ([*RUN, "--set", "eval.au_threshold=-0.1"], "'eval.au_threshold' must be a finite number >= 0"),
    ([*RUN, "--set", "task.n_train=0"], "'task.n_train' must be an integer >= 1, got 0"),
    ([*RUN, "--set", "task.n_test=-1"], "'task.n_test' must be an integer >= 1, got -1"),
    ([*RUN, "--set", "task.image_size=0"], "'task.image_size' must be an integer >= 1, got 0"),
    ([*RUN, "--set", "task.seed=-2"], "'task.seed' must be an integer in [0, 2**32), got -2"),
    ([*RUN, "--set", "task.noise=nan"], "'task.noise' must be a finite number in [0, 10.0], got nan"),
    ([*RUN, "--set", "model.latent_dim=0"], "'model.latent_dim' must be an integer >= 1, got 0"),
    ([*RUN, "--set", "model.channels=-8"], "'model.channels' must be an integer >= 1, got -8"),
    ([*RUN, "--set", "task.image_size=1"], "model 'vae' cannot take toy-corr images of 1×1×1"),
    ([*FILE, "task.path={in}/one-pixel.npz"], "model 'vae' cannot take file images of 1×1×1"),
    ([*FILE, "task.path={in}/wide.npz"], "model 'vae' cannot take file images of 1×3×1000"),
    ([*FILE, "task.path={in}/not-npy.npz"], "member 'images.npy' is not a .npy array"),
    ([*FILE, "task.path={in}/huge.npz"], "member 'images.npy' claims shape (16777216, 16777216, 6)"),
    (["run", "--config", "{in}/binary.yaml"], "binary.yaml is not UTF-8 text"),
    ([*RUN, "--out", "{in}/a-file/results"], "a-file is a file"),
    ([*RUN, "--out", "/sys/hvbench-results"], "cannot create run folder /sys/hvbench-results/"),
    ([*RUN, "--set", "output.run_id=finished"], f"run folder {RUNS}/finished already exists"),
    (["run", "--resume", "{in}"], "inputs is not a run folder (it has no config.yaml)"),
    (["run", "--resume", f"{RUNS}/interrupted", "--set", "train.steps=99"], "--resume cannot change train.steps (the run has 30, asked 99)"),
    (["run", "--resume", f"{RUNS}/interrupted", "--set", "eval.iwae_k=5"], "--resume cannot change eval.iwae_k (the run has 16, asked 5)"),
    (["run", "--resume", f"{RUNS}/interrupted", "--config", SMOKE], "drop --config"),
    (["run", "--resume", f"{RUNS}/finished"], f"run {RUNS}/finished already finished"),
    (["run", "--resume", f"{RUNS}/foreign-checkpoint"], f"checkpoint {RUNS}/foreign-checkpoint/checkpoints/step-00000010 was written by a run with another config"),
    (["run", "--resume", f"{RUNS}/no-checkpoint"], f"{RUNS}/no-checkpoint/checkpoints/step-00000010 is not an hvbench checkpoint"),
    (["eval", "{in}/missing-run"], "missing-run is not a run folder"),
    (["eval", f"{RUNS}/finished", "--set", "train.lr=0.1"], "only takes eval.KEY=VALUE overrides, got 'train.lr=0.1'"),
    (["eval", f"{RUNS}/finished", "--set", "eval.iwae_k=-1"], "'eval.iwae_k' must be an integer >= 0, got -1"),
    (["eval", f"{RUNS}/interrupted"], f"run {RUNS}/interrupted is interrupted, not finished"),
    (["eval", f"{RUNS}/no-weights"], f"run {RUNS}/no-weights has no model.safetensors"),
    (["eval", f"{RUNS}/truncated"], f"{RUNS}/truncated/model.safetensors does not hold this run's model"),
    (["eval", f"{RUNS}/foreign"], f"{RUNS}/foreign/model.safetensors does not hold this run's model"),
    (["leaderboard", "--root", "typo"], "results root typo is not a folder"),
    (["leaderboard", "--root", "{in}/a-file"], "a-file is not a folder"),
    (["leaderboard", "--root", "/sys"], "cannot write the leaderboard into /sys"),
]
# a handful also as a user runs them: a path escape, a binary file, a typo'd root, no weights
SUBPROCESS = [
    case
    for case in CASES
    if case[0][-1].endswith(("ESCAPED", "binary.yaml", "typo", "no-weights"))
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def check(code: int | None, stderr: str, fragment: str, before: dict, inputs: Path) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("hvbench: error: "), stderr
    assert fragment.replace("{in}", str(inputs / "inputs")) in lines[0]
    assert snapshot(inputs) == before, "something was written"
    assert not Path(ABSOLUTE).exists() and not Path("/sys/hvbench-results").exists()


def ids(cases: list) -> list[str]:
    return [" ".join(argv[1:])[-60:] for argv, _ in cases]


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=ids(CASES))
def test_bad_input_in_process(
    argv: list[str],
    fragment: str,
    inputs: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(inputs / "work")
    before = snapshot(inputs)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("{in}", str(inputs / "inputs")) for a in argv])
    check(exit_.value.code, capsys.readouterr().err, fragment, before, inputs)


@pytest.mark.parametrize(("argv", "fragment"), SUBPROCESS, ids=ids(SUBPROCESS))
def test_bad_input_in_a_subprocess(argv: list[str], fragment: str, inputs: Path) -> None:
    before = snapshot(inputs)
    result = run_cli(*[a.replace("{in}", str(inputs / "inputs")) for a in argv], cwd=inputs / "work")
    check(result.returncode, result.stderr, fragment, before, inputs)
