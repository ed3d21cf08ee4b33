"""scripts/side_by_side.py, the script behind results/side-by-side.md, run through on
seconds-long nets with a stand-in for the official timer: each round's ratios must be
hvbench's own bench numbers over the timer's, and the conv-rate percentage the bf16 cell's
GFLOP/s over the bf16 probe of the same round."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import CONFIGS, load_script

OFFICIAL_IMAGES_PER_S = 7.0


@pytest.mark.slow
def test_side_by_side_ratios_are_taken_within_each_round(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copy(CONFIGS / "smoke" / "toy-biva.yaml", configs / "biva.yaml")
    timer = tmp_path / "timer.py"
    timer.write_text(
        "import json, sys\n"
        f"print(json.dumps({{'peer': sys.argv[1], 'images_per_sec': {OFFICIAL_IMAGES_PER_S}}}))\n"
    )
    out = tmp_path / "out"
    command = ["--official", f"{sys.executable} {timer} biva_{{model}}", "--label", "stand-in"]
    command += ["--models", "biva"]  # one paper net: the others take the same path
    command += ["--configs", str(configs), "--shape", "1,32,32", "--batch", "4", "--steps", "1"]
    command += [
        "--official-steps",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--probe-seconds",
        "0.05",
        "--probe-batch",
        "4",
        "--out",
        str(out),
    ]
    load_script("side_by_side").main(command)  # its `hvbench bench` rounds are subprocesses

    record = json.loads((out / "side-by-side.json").read_text())
    assert record["official"] == "stand-in" and record["rounds"] == 2
    # the machine and the day: results of CPUs with and without bf16 units are kept apart
    assert record["option"] == "plain" and record["date"] == record["when"][:10]
    assert set(record["cpu"]) == {"model", "flags"}
    if record["cpu"]["flags"] is not None:
        assert {"amx_bf16", "avx512_bf16"} <= set(record["cpu"]["flags"])
    assert list(record["table"]) == ["biva"]
    for cell in record["table"]["biva"]["rounds"]:
        assert cell["official_fp32"] == OFFICIAL_IMAGES_PER_S
        assert cell["fp32"] > 0 and cell["bf16"] > 0
        assert cell["fp32_ratio"] == pytest.approx(cell["fp32"] / OFFICIAL_IMAGES_PER_S)
        assert cell["bf16_ratio"] == pytest.approx(cell["bf16"] / OFFICIAL_IMAGES_PER_S)
        share = cell["bf16_gflop_per_s"] / cell["bf16_conv_rate"]
        assert cell["bf16_of_conv_rate"] == pytest.approx(share)
        assert 0 < cell["bf16_non_conv_share"] < 1 and 0 < cell["fp32_non_conv_share"] < 1
    table = (out / "side-by-side.md").read_text()
    assert "| biva | 7.0 |" in table and "| vae |" not in table
    assert "non-conv share bf16 / fp32" in table and record["date"] in table
