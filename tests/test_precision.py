"""Speed options that must not change the numbers: bf16 autocast, channels-last memory, and
the blocks' own dropout."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from hvbench.bench import bench_models, synthetic_batch
from hvbench.blocks import Dropout, GatedResBlock, LatentParams, LatentToFeatures
from hvbench.config import TrainConfig, resolve
from hvbench.evaluate import evaluate_split
from hvbench.latents import DiagonalGaussian
from hvbench.run import build_model, execute, load_task
from hvbench.train import with_speed_options
from tests.conftest import CONFIGS


@pytest.fixture
def fresh_accelerator() -> Iterator[None]:
    """Accelerate keeps one process-wide state, fixed by the first precision it was given;
    one torch thread, as tests/task_runs.py explains."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
    torch.set_num_threads(threads)


def smoke_elbo(tmp_path: Path, *overrides: str) -> float:
    cfg = resolve(
        config_file=CONFIGS / "smoke" / "toy-lvae.yaml",
        overrides=[f"output.root={tmp_path}", "output.figures=false", *overrides],
    )
    AcceleratorState._reset_state(True)
    record = json.loads((execute(cfg) / "metrics.json").read_text())
    assert record["run"]["precision"] == cfg.train.precision
    return record["metrics"]["test/elbo_nats"]


def test_bf16_and_channels_last_runs_keep_the_fp32_elbo(
    tmp_path: Path, fresh_accelerator: None
) -> None:
    """Same seed, same data order: the runs differ only in rounding (bf16) or memory layout.

    At this size the test ELBO moves 15-60% from one seed to another, and bf16 moved it
    0.2% here; 1% fails a loss, KL or metric left in bf16 while not tripping on rounding.
    Channels-last only reorders the same fp32 sums.
    """
    fp32 = smoke_elbo(tmp_path)
    assert smoke_elbo(tmp_path, "train.precision=bf16") == pytest.approx(fp32, rel=0.01)
    assert smoke_elbo(tmp_path, "train.channels_last=true") == pytest.approx(fp32, rel=1e-5)


def test_the_final_evaluation_is_fp32_whatever_the_training_precision(
    fresh_accelerator: None,
) -> None:
    """The same weights score the same numbers under a bf16 Accelerator as under fp32, though
    the bf16-prepared model's own forward (what training runs) gives another ELBO."""
    cfg = resolve(config_file=CONFIGS / "smoke" / "toy-lvae.yaml")
    task = load_task(cfg)
    x = task.splits["test"][:64]

    def scored(precision: str) -> tuple[dict[str, float], torch.Tensor]:
        AcceleratorState._reset_state(True)
        accelerator = Accelerator(mixed_precision=precision)
        torch.manual_seed(0)
        model = accelerator.prepare(build_model(cfg, task))
        torch.manual_seed(1)
        with torch.no_grad():
            forward = model.eval()(x).elbo  # before evaluation strips the autocast wrapper
        torch.manual_seed(2)
        grad_modes: list[bool] = []
        hook = model.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
        metrics = evaluate_split(model, task, "test", accelerator, cfg.eval).metrics
        hook.remove()
        assert grad_modes and not any(grad_modes)  # no autograd graph: 32 draws would not fit
        return {k: v for k, v in metrics.items() if "images_per_s" not in k}, forward

    bf16, bf16_forward = scored("bf16")
    fp32, fp32_forward = scored("no")
    assert not torch.equal(bf16_forward, fp32_forward)
    assert bf16 == fp32


def test_speed_options_keep_parameter_names() -> None:
    """Checkpoints and model.safetensors are written from the plain model's state dict."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten())
    names = list(model.state_dict())
    with_speed_options(model, TrainConfig(channels_last=True, compile=True))
    assert list(model.state_dict()) == names
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model._compiled_call_impl is not None  # compiled on its first call


def test_a_channels_last_projection_computes_the_same_map_and_gradients() -> None:
    """Under channels-last a dense `LatentToFeatures` adds its bias in channels-last order
    (its gradient a sum of contiguous rows): the same map, in that layout, and the same
    gradients for the same parameters as the plain projection, to rounding."""
    torch.manual_seed(0)
    plain = LatentToFeatures(8, (16, 5, 7), spatial=False)
    fast = LatentToFeatures(8, (16, 5, 7), spatial=False)
    fast.load_state_dict(plain.state_dict())
    fast.memory_format = torch.channels_last
    z, weights = torch.randn(6, 8), torch.randn(6, 16, 5, 7)
    maps = [module(z) for module in (plain, fast)]
    assert maps[1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(maps[1], maps[0])
    for m in maps:
        (m * weights).sum().backward()
    for name, reference in plain.named_parameters():
        torch.testing.assert_close(fast.get_parameter(name).grad, reference.grad)


def test_a_dense_group_reads_a_channels_last_map_as_it_reads_a_plain_one() -> None:
    """A dense `LatentParams` reads a channels-last map in memory order, its weight's columns
    permuted to match: the same (μ, log σ) and the same gradients, for its parameters and for
    the map, as from the same map in NCHW, to rounding."""
    torch.manual_seed(0)
    group = LatentParams((16, 5, 7), 6, spatial=False, activation="elu")
    plain = torch.randn(4, 16, 5, 7, requires_grad=True)
    fast = plain.detach().to(memory_format=torch.channels_last).requires_grad_()
    taken: list[torch.Tensor] = []
    in_memory_order = group._channels_last_params
    group._channels_last_params = lambda h: taken.append(h) or in_memory_order(h)
    outputs, grads = [], []
    for h in (plain, fast):
        q = group(h)
        (q.mu.square().sum() + q.log_sigma.sum()).backward()
        outputs.append((q.mu, q.log_sigma))
        grads.append([p.grad.clone() for p in group.parameters()])
        group.zero_grad()
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(fast.grad, plain.grad)
    assert len(taken) == 1  # the channels-last map took the memory-order path, NCHW did not


def test_a_dense_groups_bf16_weight_is_cast_before_it_is_permuted() -> None:
    """Under bf16 autocast the memory-order read casts the weight first and permutes the bf16
    copy: bit for bit the (μ, log σ) and gradients of permuting the fp32 weight and letting
    autocast cast it (a cast commutes with a permutation), with one fp32 pass fewer."""
    torch.manual_seed(0)
    group = LatentParams((16, 5, 7), 6, spatial=False, activation="elu")
    proj = group.params.proj
    h = torch.randn(4, 16, 5, 7).to(torch.bfloat16, memory_format=torch.channels_last)

    def permuted_in_fp32(a: torch.Tensor) -> DiagonalGaussian:
        weight = proj.weight.view(-1, 16, 5, 7).permute(0, 2, 3, 1).reshape(12, -1)
        out = F.linear(a.permute(0, 2, 3, 1).reshape(4, -1), weight, proj.bias)
        return DiagonalGaussian.from_params(out, dim=1)

    results = []
    for read in (group._channels_last_params, permuted_in_fp32):
        x = h.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q = read(group.act(x))
        (q.mu.square().sum() + q.log_sigma.sum()).backward()
        results.append((q.mu, q.log_sigma, x.grad, [p.grad.clone() for p in group.parameters()]))
        group.zero_grad()
    assert results[0][2].dtype == torch.bfloat16
    for new, old in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=0)


@pytest.mark.parametrize(  # a mask of 16-bit, of 8-bit and of 1-bit draws
    ("p", "dtype"),
    [(0.3, torch.float32), (0.75, torch.float32), (0.5, torch.float32), (0.5, torch.bfloat16)],
)
def test_dropout_keeps_the_distribution_of_nn_dropout(p: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.ones(400, 500, dtype=dtype, requires_grad=True)
    y = drop(x)
    dropped = (y == 0).float().mean()
    assert dropped == pytest.approx(p, abs=0.005)  # 5 standard errors of 200,000 draws
    assert y.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is masked and scaled alike
    assert drop.eval()(x) is x


def test_dropout_masks_follow_the_activations_dtype_and_layout() -> None:
    """A bf16 channels-last map gets a bf16 channels-last mask: no cast, no layout copy; the
    mask's memory is drawn in order, so elements next to each other in memory are independent."""
    torch.manual_seed(0)
    x = torch.ones(8, 16, 12, 12, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    y = Dropout(0.5)(x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    kept = (y != 0).permute(0, 2, 3, 1).flatten().float()  # memory order
    assert kept.mean() == pytest.approx(0.5, abs=0.02)
    assert (kept[1:] == kept[:-1]).float().mean() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(64, 125), (3, 7, 11)])  # numel a multiple of 8, and not
def test_one_bit_masks_are_fair_and_independent_in_every_dtype(dtype, shape) -> None:
    """p = ½ masks come from one random bit per element, shifted into 2.0's exponent bit:
    every value is 0 or 2, half are kept, and neighbours in memory (which take the same bit of
    different bytes) and elements a row of the bit matrix apart agree half the time."""
    torch.manual_seed(0)
    x = torch.ones(200, *shape, dtype=dtype)
    y = Dropout(0.5)(x)
    assert y.dtype == dtype and set(y.unique().tolist()) == {0.0, 2.0}
    kept = (y != 0).flatten().float()
    n = kept.numel()
    assert kept.mean() == pytest.approx(0.5, abs=5 * 0.5 / n**0.5)
    for gap in (1, -(-n // 8)):
        same = (kept[gap:] == kept[:-gap]).float().mean()
        assert same == pytest.approx(0.5, abs=5 * 0.5 / (n - gap) ** 0.5)


def test_a_blocks_mask_reads_its_convolution_not_its_activation() -> None:
    """The mask is drawn from conv₁'s output, which the block has before it sums and
    activates: in the traced graph nothing the activation makes feeds it, so inductor can
    fuse the sum, the activation and the multiply into one kernel."""
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, _inputs: list) -> Callable:
        graphs.append(gm)
        return gm.forward

    block = GatedResBlock((4, 6, 6), 4, 3, (6, 6), skip_shape=(4, 6, 6), dropout=0.5).train()
    torch.compile(block, backend=record, fullgraph=True)(torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6))
    (graph,) = graphs
    (mask,) = [n for n in graph.graph.nodes if n.target is torch.ops.hvbench.scaled_mask.default]
    source = mask.args[0]
    while source.target in ("detach", torch.Tensor.detach):
        source = source.args[0]
    assert source.target in (torch.conv2d, F.conv2d) or "conv1" in str(source.target)


def test_compiled_dropout_is_one_op_of_the_graph_and_draws_the_eager_mask() -> None:
    """Under torch.compile the mask is an opaque op of the graph: a BIVA training step with
    dropout is one graph (with a break at each dropout, the paper config's step was 42 graphs,
    each block's forward recompiled past dynamo's limit) and inductor's own per-element random
    numbers are not drawn; the mask is eager's."""
    (biva,) = bench_models(["biva"], [], ["model.filters=4", "model.dropout=0.5"], "1,8,8", "bernoulli")
    model = biva.build().train()
    images = synthetic_batch(biva.spec, 2, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch._dynamo.explain(model)(images).graph_break_count == 0
    torch.manual_seed(0)
    block = GatedResBlock((4, 6, 6), 4, 3, (6, 6), dropout=0.5)
    x = torch.randn(2, 4, 6, 6)
    torch.manual_seed(1)
    eager = block(x)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.manual_seed(1)
    assert torch.equal(compiled(x), eager)
