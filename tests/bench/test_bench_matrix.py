"""`hvbench bench` as a measuring tool: the matrix, FLOPs per image, the machine's own rates
and the fractions of them, and the files it writes only when asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hvbench.bench import OPTIONS, bench_models, markdown, run_matrix, speed_config, write
from hvbench.cli import main, parser
from hvbench.errors import UserError
from hvbench.probe import CONV_BATCH, CONV_CHANNELS, conv_step, count_flops, machine_rates


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """What is checked here is what gets measured, not how fast: one thread spares a busy
    machine two OpenMP threads waiting on each other (tests/task_runs.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = {"steps": 1, "warmup": 0, "rounds": 2, "probe_seconds": 0.01, "probe_batch": 2}


def test_conv_probe_flops_are_forward_and_both_backward_convolutions() -> None:
    kernel, side = 3, 14
    forward = 2 * CONV_BATCH * CONV_CHANNELS * CONV_CHANNELS * kernel**2 * side**2
    step = conv_step(kernel, side, torch.float32, torch.device("meta"))
    assert count_flops(step) == 3 * forward


def test_machine_rates_cover_every_probe_shape() -> None:
    rates = machine_rates("no", torch.device("cpu"), seconds=0.01, batch=2)
    assert set(rates.conv_shapes) == {"3x3@14", "3x3@28", "5x5@14", "5x5@28"}
    slowest, fastest = min(rates.conv_shapes.values()), max(rates.conv_shapes.values())
    assert slowest <= rates.conv <= fastest and rates.matmul > 0  # the mix lies between


def test_matrix_times_every_cell_against_rates_of_the_same_run(tmp_path: Path) -> None:
    models = bench_models(["vae"], [], ["model.latent_dim=2"], "1,16,16", "bernoulli")
    report = run_matrix(models, ["no", "bf16"], [2, 4], ["plain", "channels_last"], **TINY)
    record = report.as_dict()
    cells = record["cells"]
    assert len(cells) == 2 * 2 * 2
    assert {(c["precision"], c["batch_size"], c["option"]) for c in cells} == {
        (p, b, o) for p in ("no", "bf16") for b in (2, 4) for o in ("plain", "channels_last")
    }
    assert set(record["probes"]) == {"no", "bf16"}
    for cell in cells:
        assert len(cell["round_images_per_s"]) == 2
        assert cell["gflop_per_image"] > 0
        rate = record["probes"][cell["precision"]]
        assert cell["conv_fraction"] == pytest.approx(cell["gflop_per_s"] / rate["conv"])
        assert cell["gflop_per_s"] == pytest.approx(cell["gflop_per_image"] * cell["images_per_s"])
    # FLOPs per image do not depend on the batch, the precision or the memory layout
    assert len({round(c["gflop_per_image"], 9) for c in cells}) == 1

    json_path, md_path = write(record, tmp_path / "out")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(record))
    text = md_path.read_text()
    assert text == markdown(record) and text.count("| vae |") == 8


def test_cpu_clock_times_process_cpu_time() -> None:
    models = bench_models(["vae"], [], ["model.latent_dim=2"], "1,16,16", "bernoulli")
    record = run_matrix(models, ["no"], [2], ["plain"], clock="cpu", **TINY).as_dict()
    assert record["settings"]["clock"] == "cpu" and "CPU time" in markdown(record)
    assert record["cells"][0]["images_per_s"] > 0 and record["probes"]["no"]["conv"] > 0


def test_bad_matrix_option_is_refused() -> None:
    models = bench_models(["vae"], [], [], "1,16,16", "bernoulli")
    with pytest.raises(UserError, match="unknown bench option 'fast'"):
        run_matrix(models, ["no"], [2], ["fast"], **TINY)


def test_the_cli_offers_every_speed_option_the_matrix_takes() -> None:
    """`hvbench bench --options` lists the choices by hand (the CLI imports no torch to
    parse its arguments), so they are checked against the matrix's own."""
    bench = next(a for a in parser()._actions if a.dest == "command").choices["bench"]
    (options,) = [a for a in bench._actions if a.dest == "options"]
    assert tuple(options.choices) == OPTIONS


def test_each_speed_option_turns_on_what_it_names() -> None:
    flags = {o: (speed_config(o).channels_last, speed_config(o).compile) for o in OPTIONS}
    assert flags == {
        "plain": (False, False),
        "channels_last": (True, False),
        "compile": (False, True),
        "channels_last+compile": (True, True),
    }


def test_cli_writes_results_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["bench", "--model", "vae", "--shape", "1,16,16", "--batch", "2", "--steps", "1"]
    args += ["--warmup", "0", "--rounds", "1", "--probe-seconds", "0.01", "--probe-batch", "2"]
    main(args)
    assert "% conv" in capsys.readouterr().out and not (tmp_path / "results").exists()
    main([*args, "--out", "results"])
    record = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert record["cells"][0]["model"] == "vae" and (tmp_path / "results" / "bench.md").is_file()
