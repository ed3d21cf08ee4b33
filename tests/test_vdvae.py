"""`vdvae` is VDVAE's network: the paper's CIFAR-10 hyper-parameters give the official
parameter count, the layout strings read as VDVAE reads them, the stabilisers' initialisation is
in place, and a run summarises its dozens of groups per resolution on the board."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hvbench.baselines.vdvae import VDVAE, VDVAEConfig, auto_layout, parse_blocks
from hvbench.config import build, read_yaml
from hvbench.errors import UserError
from hvbench.leaderboard import group_rows, load_runs
from hvbench.task import TaskSpec
from tests.conftest import CONFIGS, in_process, load_script

# VDVAE's published CIFAR-10 hyper-parameters (its hps.py `cifar10` over its argparse defaults)
PAPER = read_yaml(CONFIGS / "paper" / "vdvae.yaml")["model"]
CIFAR10 = build(VDVAEConfig, {k: v for k, v in PAPER.items() if k != "name"}, "model")
OFFICIAL_PARAMETERS = 39_145_700  # what the official code's VAE(H) counts for these


def test_cifar10_hyper_parameters_build_the_official_parameter_count() -> None:
    """Within 0.5% of the official 39,145,700, and in fact equal: every layer the official
    model has is here with the same shape (the 3×3 input conv, 33 bottom-up and 43 top-down
    blocks of four convs each, z projections, the learned initial states up to 64 pixels, the
    output gain and bias and the 1×1 conv to 100 mixture parameters, 10 · (1 + 3 + 3 + 3) for
    RGB as the official head). What differs changes no parameter: μ and log σ pass a soft clamp
    to ±5, z's projection runs in fp32 under autocast, and the likelihood is hvbench's head."""
    assert (CIFAR10.width, CIFAR10.zdim, CIFAR10.bottleneck_multiple, CIFAR10.mixtures) == (
        384,
        16,
        0.25,
        10,
    )
    assert CIFAR10.enc_blocks == "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3"
    assert CIFAR10.dec_blocks == "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21"
    torch.manual_seed(0)
    model = VDVAE(CIFAR10, TaskSpec((3, 32, 32), "dlogistic"))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - OFFICIAL_PARAMETERS) <= 0.005 * OFFICIAL_PARAMETERS
    assert count == OFFICIAL_PARAMETERS
    assert len(model.group_names) == 43 and len(model.encoder) == 33
    assert model.head.out_channels == 100


def test_layout_strings_read_as_vdvae_reads_them() -> None:
    assert parse_blocks("4x2,4d4,1", "enc_blocks") == [
        (4, "x", 0),
        (4, "x", 0),
        (4, "d", 4),
        (1, "x", 0),
    ]
    assert parse_blocks("1x1,4m1", "dec_blocks") == [(1, "x", 0), (4, "m", 1)]
    assert auto_layout(32, 2) == (
        "32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x2",
        "1x2,4m1,4x1,8m4,8x1,16m8,16x1,32m16,32x1",
    )
    for bad in ("32y3", "32x0", "", "x3"):
        with pytest.raises(UserError, match=r"model\.enc_blocks"):
            parse_blocks(bad, "enc_blocks")
    spec = TaskSpec((1, 32, 32), "gaussian")
    with pytest.raises(UserError, match="bottom-up pass is at 32"):
        VDVAE(VDVAEConfig(enc_blocks="16x2,16d16"), spec)
    with pytest.raises(UserError, match="must end at the image"):
        VDVAE(VDVAEConfig(dec_blocks="1x1,4m1"), spec)
    with pytest.raises(UserError, match="no bottom-up activation at 16"):
        VDVAE(VDVAEConfig(enc_blocks="32d4,8d8,1", dec_blocks="1x1,8m1,16m8,32m16"), spec)


def test_stabilisers_scale_the_last_layers_and_zero_the_prior() -> None:
    """Each residual block's last conv and each z projection starts within the default init's
    bound 1/√fan_in scaled by 1/√(blocks of its stack); the prior's last conv starts at zero."""
    torch.manual_seed(0)
    model = VDVAE(VDVAEConfig(width=16), TaskSpec((1, 32, 32), "gaussian"))

    def bound(conv: torch.nn.Conv2d, blocks: int) -> float:
        return 1 / math.sqrt(conv.weight[0].numel()) / math.sqrt(blocks)

    for block in model.encoder:
        last = block.convs[-1]
        assert last.weight.abs().max() <= bound(last, len(model.encoder))
    for block in model.decoder:
        for last in (block.resnet.convs[-1], block.z_proj):
            assert last.weight.abs().max() <= bound(last, len(model.decoder))
        assert not block.prior.convs[-1].weight.any()
    unscaled = model.decoder[0].posterior.convs[-1]
    assert unscaled.weight.abs().max() > bound(unscaled, len(model.decoder))


@torch.no_grad()
def test_the_posterior_reads_the_image_and_the_top_prior_does_not() -> None:
    torch.manual_seed(0)
    model = VDVAE(VDVAEConfig(width=8, zero_prior=False), TaskSpec((1, 12, 12), "bernoulli"))
    a, b = torch.zeros(2, 1, 12, 12), torch.ones(2, 1, 12, 12)
    _, first = model.hierarchy(a)
    _, second = model.hierarchy(b)
    top = model.group_names[0]
    assert torch.equal(first[top].p.mu, second[top].p.mu)
    assert not torch.equal(first[top].q.mu, second[top].q.mu)
    assert list(first) == model.group_names  # generative order, one group per top-down block


def test_a_run_summarises_its_groups_per_resolution(tmp_path: Path) -> None:
    root = tmp_path / "results"
    sets = ["output.root=" + str(root), "output.run_id=r", "output.figures=false"]
    sets += ["train.steps=4", "train.eval_every=4", "task.n_test=64", "eval.iwae_examples=8"]
    config = str(CONFIGS / "smoke" / "toy-vdvae.yaml")
    in_process("run", "--config", config, *(arg for s in sets for arg in ("--set", s)))
    record = json.loads((root / "runs" / "toy-corr" / "vdvae" / "r" / "metrics.json").read_text())
    summaries = dict(record["group_summaries"])
    assert list(summaries) == ["res1", "res4", "res8", "res16", "res32"]
    m = record["metrics"]
    for name, groups in summaries.items():
        assert groups and set(groups) <= set(record["units"]["test"])
        for count in ("units", "active_units", "conditional_active_units"):
            pooled = sum(m[f"test/{count}/{g}"] for g in groups)
            assert m[f"test/{count}/{name}"] == pooled
        kl = sum(m[f"test/kl_nats/{g}"] for g in groups)
        assert m[f"test/kl_nats/{name}"] == pytest.approx(kl)
    shares = sum(m[f"test/kl_share/{name}"] for name in summaries)
    assert shares == pytest.approx(1.0)
    (run,) = load_runs(root)
    assert [row["group"] for row in group_rows([run])] == list(summaries)


def test_side_by_side_script_runs_through_with_a_stand_in_peer(tmp_path: Path) -> None:
    """scripts/vdvae_side_by_side.py on a seconds-long net, the official side replaced by a
    script that prints what vdvae_peer.py prints: ratios within each round, both counts."""
    peer = tmp_path / "vdvae_peer.py"
    peer.write_text(
        "import json\nprint(json.dumps({'hps': 'cifar10', 'parameters': 39145700, "
        "'images_per_sec': 2.0}))\n"
    )
    out = tmp_path / "out"
    command = ["--peer", str(peer)]
    command += ["--config", str(CONFIGS / "smoke" / "toy-vdvae.yaml"), "--shape", "3,12,12"]
    command += ["--rounds", "1", "--batch", "2", "--steps", "1", "--official-steps", "1"]
    command += ["--warmup", "0", "--threads", "1", "--probe-seconds", "0.02", "--probe-batch", "2"]
    command += ["--out", str(out)]
    load_script("vdvae_side_by_side").main(command)  # the peer and the bench are subprocesses
    record = json.loads((out / "vdvae-side-by-side.json").read_text())
    assert len(record["rounds"]) == 1 and "model" in record["cpu"]
    for cell in record["rounds"]:
        assert cell["official_fp32"] == 2.0 and cell["official_parameters"] == 39145700
        assert cell["fp32_ratio"] == pytest.approx(cell["fp32"] / 2.0)
        assert cell["bf16_ratio"] == pytest.approx(cell["bf16"] / 2.0)
    table = (out / "vdvae-side-by-side.md").read_text()
    assert "| 2.00 |" in table and "39,145,700 / " in table
