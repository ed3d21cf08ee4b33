"""`dagvae` against its contract: graph validation, the DAG's conditional independences,
the hierarchy's maths, and the mirrored-trunk ablation's bottleneck.

Tiny nets on 16×16 inputs so the file runs in seconds; models are built through the
registry from a config section, exactly as a run builds them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from hvbench.config import build
from hvbench.dagvae.concept_graph import ConceptNode, levels, validate
from hvbench.errors import UserError
from hvbench.latents import GaussianParams
from hvbench.registry import MODELS
from hvbench.task import TaskSpec
from tests.conftest import CONFIGS, cli_here
from tests.model_checks import (
    binary_batch,
    check_bf16_matches_fp32,
    check_gradients_reach_every_group_and_parameter,
    check_iwae_brackets_elbo,
    check_kl_terms,
)

# a diamond with an extra root: a → b, a → c, (b, c) → d, and e alone
NODES = [
    {"name": "d", "dims": 2, "parents": ["b", "c"]},
    {"name": "b", "dims": 1, "parents": ["a"]},
    {"name": "a", "dims": 2},
    {"name": "c", "dims": 3, "parents": ["a"], "scale": 0},
    {"name": "e", "dims": 1},
]
SMALL = {"nodes": NODES, "widths": [4, 8], "head_hidden": 16, "prior_hidden": 8, "pool": 2}
CASES = {
    "spatial": SMALL,
    "spatial-residual": {**SMALL, "residual": 2, "residual_scale": 0},
    "mirrored": {**SMALL, "trunk": "mirrored"},
}
SPEC = TaskSpec((1, 16, 16), "bernoulli")


def make(case: str, spec: TaskSpec = SPEC, seed: int = 0, **overrides: object) -> torch.nn.Module:
    entry = MODELS.get("dagvae")
    torch.manual_seed(seed)
    return entry.build(build(entry.config, {**CASES[case], **overrides}, "model"), spec).eval()


def spread(model: torch.nn.Module) -> torch.nn.Module:
    """Push posteriors and priors away from a fresh init's near-N(0, 1) so KLs are nats."""
    layers = [m[-1] for m in [*model.heads, *model.priors] if isinstance(m, torch.nn.Sequential)]
    layers += [m.proj for m in model.modules() if isinstance(m, GaussianParams)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(2.0)
            layer.bias.normal_(0.0, 0.5)
    return model


def batch(n: int = 4, spec: TaskSpec = SPEC) -> torch.Tensor:
    return binary_batch(n, spec)


def config_error(overrides: dict) -> str:
    entry = MODELS.get("dagvae")
    with pytest.raises(UserError) as err:
        entry.build(build(entry.config, overrides, "model"), SPEC)
    message = str(err.value)
    assert "\n" not in message
    return message


# ---- the graph -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ([], "model.nodes is empty"),
        ([{"name": "a"}, {"name": "a"}], "duplicate node name 'a'"),
        ([{"name": "a", "dims": 0}], "node 'a' has dims 0; dims must be at least 1"),
        (
            [{"name": "a"}, {"name": "b", "parents": ["q"]}],
            "node 'b' has unknown parent 'q'; nodes: a, b",
        ),
        (
            [
                {"name": "r"},
                {"name": "a", "parents": ["r", "c"]},
                {"name": "b", "parents": ["a"]},
                {"name": "c", "parents": ["b"]},
            ],
            "model.nodes has a cycle: a → b → c → a",
        ),
        ([{"name": "a", "parents": ["a"]}], "model.nodes has a cycle: a → a"),
    ],
)
def test_invalid_graphs_are_refused_in_one_line_naming_the_problem(
    nodes: list, expected: str
) -> None:
    assert expected in config_error({"nodes": nodes})


def test_other_bad_settings_name_the_value() -> None:
    assert "model.dag is 'task' but this task has no ground-truth DAG" in config_error(
        {"dag": "task"}
    )
    assert "node 'c' scale is 5, but the trunk has 2 scales" in config_error(
        {**SMALL, "nodes": [*NODES[:3], {**NODES[3], "scale": 5}, NODES[4]]}
    )
    entry = MODELS.get("dagvae")
    dag_spec = TaskSpec((1, 16, 16), "bernoulli", {"u": (), "v": ("u",)})
    with pytest.raises(UserError, match=r"model\.node_dims names 'w', not a node"):
        entry.build(build(entry.config, {"dag": "task", "node_dims": {"w": 3}}, "model"), dag_spec)


def test_a_cyclic_config_exits_2_before_any_data_is_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smoke = yaml.safe_load((CONFIGS / "smoke" / "toy-dagvae.yaml").read_text())
    smoke["model"]["nodes"][0]["parents"] = ["c"]
    config = tmp_path / "cyclic.yaml"
    config.write_text(yaml.safe_dump(smoke))
    result = cli_here(capsys, "run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "hvbench: error: model.nodes has a cycle: a → c → a"
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


def test_topological_order_puts_parents_first_and_keeps_config_order_among_equals() -> None:
    nodes = [ConceptNode(n["name"], n["dims"], tuple(n.get("parents", ()))) for n in NODES]
    order = [n.name for n in validate(nodes)]
    assert order == ["a", "b", "c", "d", "e"]
    assert levels(validate(nodes)) == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 0}


def test_task_dag_gives_one_node_per_factor_with_configurable_dims() -> None:
    entry = MODELS.get("dagvae")
    spec = TaskSpec((1, 16, 16), "bernoulli", {"u": (), "v": ("u",), "w": ("u", "v")})
    cfg = build(entry.config, {"dag": "task", "dims": 3, "node_dims": {"v": 1}}, "model")
    model = entry.build(cfg, spec)
    assert [(n.name, n.dims, n.parents) for n in model.order] == [
        ("u", 3, ()),
        ("v", 1, ("u",)),
        ("w", 3, ("u", "v")),
    ]
    assert {g: k.shape[1] for g, k in model(batch(2, spec)).kl_units.items()} == {
        "u": 3,
        "v": 1,
        "w": 3,
    }


# ---- the DAG's conditional independences -----------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_prior_and_posterior_read_exactly_the_parents(case: str) -> None:
    model, x = spread(make(case)), batch()
    features = model.features(x)
    base = {n.name: torch.randn(len(x), n.dims) for n in model.order}
    for i, node in enumerate(model.order):
        q, p = model.conditionals(i, features, base, len(x))
        for other in model.order:
            if other.name == node.name:
                continue
            moved = {**base, other.name: base[other.name] + 3.0}
            q2, p2 = model.conditionals(i, features, moved, len(x))
            same = torch.equal(q.mu, q2.mu) and torch.equal(p.mu, p2.mu)
            assert same == (other.name not in node.parents), (node.name, other.name)
        if not node.parents:
            assert p.mu.abs().max() == 0 and p.log_sigma.abs().max() == 0  # N(0, I)


@torch.no_grad()
def test_a_node_reads_the_trunk_scale_it_is_given() -> None:
    model, x = make("spatial"), batch()
    features = model.features(x)
    base = {n.name: torch.zeros(len(x), n.dims) for n in model.order}
    index = {n.name: i for i, n in enumerate(model.order)}
    for name, reads in [("c", 0), ("a", 1)]:  # c reads scale 0, the others the deepest (1)
        q, _ = model.conditionals(index[name], features, base, len(x))
        for scale in range(2):
            changed = [f + 1.0 if s == scale else f for s, f in enumerate(features)]
            q2, _ = model.conditionals(index[name], changed, base, len(x))
            assert torch.equal(q.mu, q2.mu) == (scale != reads), (name, scale)


# ---- the hierarchy's maths -------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_elbo_is_reconstruction_minus_kl_and_each_kl_matches_monte_carlo(case: str) -> None:
    model, x = spread(make(case)), batch()
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    px_params, groups = model.hierarchy(x)
    expected = ["a", "b", "c", "d", "e"] + (["residual"] if "residual" in case else [])
    assert list(out.kl_units) == expected  # groups = nodes, in topological order
    log_px = model.head.log_prob(px_params, model.head.prepare(x))
    assert torch.allclose(out.elbo, log_px - sum(k.sum(1) for k in out.kl_units.values()))
    assert all(s.analytic for s in groups.values())  # parents are drawn before children
    check_kl_terms(out, groups)
    assert out.kl_total.mean() > 1.0  # nats, not hundredths: the check has teeth


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_reach_every_node_and_every_block(case: str) -> None:
    check_gradients_reach_every_group_and_parameter(make(case), batch())


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_iwae_is_above_the_elbo_and_iwae_1_is_the_elbo_in_expectation(case: str) -> None:
    check_iwae_brackets_elbo(spread(make(case)), batch())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "spec",
    [SPEC, TaskSpec((1, 12, 12), "gaussian"), TaskSpec((3, 10, 14), "dlogistic")],
    ids=["binary", "continuous", "rgb-odd"],
)
@torch.no_grad()
def test_ancestral_samples_from_the_prior_are_task_shaped(case: str, spec: TaskSpec) -> None:
    model = make(case, spec)
    torch.manual_seed(4)
    params, groups = model.ancestral_pass(None, 5)
    assert groups == {}  # nothing is inferred when sampling
    assert params.shape == (5, model.head.out_channels, *spec.shape[1:])
    torch.manual_seed(4)
    samples = model.sample(5)
    assert samples.shape == (5, *spec.shape) and torch.isfinite(samples).all()
    torch.manual_seed(4)
    assert torch.equal(model.head.mean(model.ancestral_pass(None, 5)[0]), samples)


@pytest.mark.parametrize("case", list(CASES))
def test_deterministic_under_a_seed_and_bf16_matches_fp32_loosely(case: str) -> None:
    outputs = []
    for _ in range(2):
        model = make(case, seed=5)
        torch.manual_seed(6)
        outputs.append((model(batch()).elbo, model.sample(3), model.log_weights(batch(), 3)))
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a, b)
    check_bf16_matches_fp32(model, batch())


# ---- training and the ablation ---------------------------------------------------------


@pytest.mark.parametrize("trunk", ["spatial", "mirrored"])
def test_a_single_root_graph_trains_without_nans(trunk: str) -> None:
    model = make("spatial", nodes=[{"name": "root", "dims": 2}], trunk=trunk).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = batch(32)
    losses = []
    for _ in range(40):
        loss = -model(x).elbo.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5])


def test_mirrored_trunk_squeezes_the_image_through_layers_as_wide_as_the_dag_levels() -> None:
    model, x = make("mirrored"), batch()
    # levels: {a, e} (3 units), {b, c} (4 units), {d} (2 units), deepest next to the image
    assert model.level_widths == [3, 4, 2]
    assert [f.shape[1] for f in model.features(x)] == [3, 4, 2]
    spatial = make("spatial")
    assert [f.shape[1] for f in spatial.features(x)] == [4 * 2 * 2, 8 * 2 * 2]
