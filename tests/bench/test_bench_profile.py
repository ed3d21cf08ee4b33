"""`hvbench bench --profile`: every cell's step time split by category of op, the split
written to bench.json and bench.md, and the op-name mapping it rests on (hvbench/breakdown.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hvbench.bench import bench_models, markdown, run_matrix
from hvbench.breakdown import CATEGORIES, category, profile_steps
from hvbench.cli import main
from hvbench.errors import UserError

TINY = {"steps": 1, "warmup": 1, "rounds": 1, "probe_seconds": 0.01, "probe_batch": 2}
# a two-stage BIVA with dropout: convolutions, dense latent heads, noise and every gated block
BIVA = ["model.filters=8", "model.latents=[4,2]", "model.kernels=[3,3]", "model.strides=[2,2]"]
BIVA += ["model.dropout=0.5"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("aten::convolution_backward", "convolution"),
        ("aten::mkldnn_convolution", "convolution"),
        ("aten::cudnn_convolution", "convolution"),
        ("aten::addmm", "matmul"),
        ("aten::copy_", "casts"),
        ("aten::_to_copy", "casts"),
        ("aten::uniform_", "random"),
        ("aten::random_", "random"),
        ("aten::native_dropout", "random"),
        ("aten::elu_backward", "element-wise"),
        ("aten::mul", "element-wise"),
        ("aten::cat", "element-wise"),
        ("cpp_fused_add_elu_0", "element-wise"),
        ("graph_1_cpp_fused_convolution_backward_elu_backward_1", "element-wise"),
        ("triton_poi_fused_mul_sigmoid_1", "element-wise"),
        ("aten::empty_strided", "other"),
        ("aten::view", "other"),
        ("autograd::engine::evaluate_function: EluBackward0", "other"),
        ("Optimizer.step#Adam.step", "optimiser"),
    ],
)
def test_ops_fall_in_their_category(name: str, expected: str) -> None:
    assert category(name) == expected


def test_optimiser_ops_count_as_optimiser_whatever_their_name() -> None:
    """Adam's `mul_`/`lerp_` are optimiser time, the model's element-wise: told by their caller."""
    net = torch.nn.Linear(64, 64)
    optimizer = torch.optim.Adam(net.parameters(), foreach=False)  # one op per tensor and moment
    x = torch.randn(32, 64)

    def step() -> None:
        net(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    found = profile_steps(step, 2, torch.device("cpu"))
    assert found["shares"]["optimiser"] > 0 and found["shares"]["matmul"] > 0
    assert not any(
        o["op"] == "aten::lerp_" and o["category"] != "optimiser" for o in found["top_ops"]
    )


def test_profile_splits_every_cell_and_is_written(tmp_path: Path) -> None:
    models = bench_models(["biva"], [], BIVA, "1,16,16", "bernoulli")
    record = run_matrix(models, ["no", "bf16"], [4], ["plain"], profile=1, **TINY).as_dict()
    assert record["settings"]["profile_steps"] == 1
    for cell in record["cells"]:
        profile = cell["profile"]
        assert profile["clock"] == "cpu" and profile["steps"] == 1
        assert set(profile["shares"]) == set(CATEGORIES)
        assert sum(profile["shares"].values()) == pytest.approx(1.0)
        assert sum(profile["ms"].values()) == pytest.approx(profile["ms_per_step"])
        for part in ("convolution", "random", "optimiser", "element-wise"):
            assert profile["shares"][part] > 0, part
        non_conv = sum(profile["shares"][k] for k in ("casts", "random", "element-wise"))
        assert profile["non_convolution_share"] == pytest.approx(non_conv)
        assert profile["top_ops"] and all(o["category"] in CATEGORIES for o in profile["top_ops"])
    text = markdown(record)
    assert "Step time by category of op" in text and text.count("| biva |") == 4
    assert "% non-conv" in text


def test_without_profile_nothing_is_profiled() -> None:
    models = bench_models(["vae"], [], ["model.latent_dim=2"], "1,16,16", "bernoulli")
    record = run_matrix(models, ["no"], [2], ["plain"], **TINY).as_dict()
    assert record["cells"][0]["profile"] is None and "by category" not in markdown(record)
    with pytest.raises(UserError, match="--profile takes a positive number"):
        run_matrix(models, ["no"], [2], ["plain"], profile=-1, **TINY)


def test_cli_prints_and_writes_the_profile(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["bench", "--model", "biva", *[a for s in BIVA for a in ("--set", s)]]
    args += ["--shape", "1,16,16", "--batch", "2", "--steps", "1", "--warmup", "1"]
    args += ["--rounds", "1", "--probe-seconds", "0.01", "--probe-batch", "2"]
    main([*args, "--profile", "--out", str(tmp_path)])
    assert "step time by category of op (2 profiled steps)" in capsys.readouterr().out
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["cells"][0]["profile"]["steps"] == 2
