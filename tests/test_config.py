"""Typed config: YAML + overrides, unknown keys and bad types rejected with one line."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from hvbench.config import (
    SECTIONS,
    RunConfig,
    TrainConfig,
    flatten,
    parse_override,
    read_yaml,
    resolve,
    section_overrides,
)
from hvbench.errors import UserError
from hvbench.options import of
from tests.conftest import CONFIGS


def test_default_config_file_is_applied() -> None:
    cfg = resolve("toy-corr", "vae")
    assert isinstance(cfg, RunConfig)
    steps = read_yaml(CONFIGS / "toy-corr" / "vae.yaml")["train"]["steps"]
    assert steps != TrainConfig().steps  # so the check below can tell the two apart
    assert cfg.train.steps == steps  # from configs/toy-corr/vae.yaml, not the dataclass default
    assert cfg.task.correlation == 0.8


def test_overrides_win_and_are_typed() -> None:
    cfg = resolve(
        "toy-corr", "vae", overrides=["train.lr=3e-4", "model.latent_dim=7", "task.correlation=0.5"]
    )
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.latent_dim == 7
    assert cfg.task.correlation == 0.5


def test_config_file_and_names_inside_it(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "task: {name: toy-uncorr, n_train: 64}\nmodel: {name: vae}\ntrain: {steps: 3}\n"
    )
    cfg = resolve(config_file=path)
    assert (cfg.task_name, cfg.model_name, cfg.task.n_train, cfg.train.steps) == (
        "toy-uncorr",
        "vae",
        64,
        3,
    )


def test_precision_no_is_a_word_in_files_and_overrides(tmp_path: Path) -> None:
    """YAML 1.1 reads `no` as False; the precision choice must arrive as the word."""
    assert resolve("toy-corr", "vae", overrides=["train.precision=no"]).train.precision == "no"
    path = tmp_path / "run.yaml"
    path.write_text("task: {name: toy-corr}\nmodel: {name: vae}\ntrain: {precision: no}\n")
    assert resolve(config_file=path).train.precision == "no"
    assert parse_override("train.compile=false") == (["train", "compile"], False)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.stepz=5", "unknown config key 'train.stepz'; allowed:"),
        ("model.latent_dims=5", "unknown config key 'model.latent_dims'"),
        ("optim.lr=1", "unknown config section 'optim'"),
        ("train.steps=many", "config key 'train.steps' expects int, got 'many'"),
        ("train.steps=1.5", "expects int"),
        ("train.precision=fp8", "choose from: no, bf16, fp16"),
        ("train.seed=true", "expects int"),
        ("train.compile=yes", "config key 'train.compile' expects bool, got 'yes'"),
        ("train", "--set expects KEY.PATH=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(UserError, match=None) as err:
        resolve("toy-corr", "vae", overrides=[override])
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_task_and_model_list_choices() -> None:
    with pytest.raises(
        UserError,
        match=r"unknown task 'toy-cor' \(did you mean 'toy-corr'\?\); choose from: .*toy-uncorr",
    ):
        resolve("toy-cor", "vae")
    with pytest.raises(UserError, match=r"unknown model 'vea'.*choose from: .*vae"):
        resolve("toy-corr", "vea")


def test_parse_override_reads_yaml_scalars() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a.b=null") == (["a", "b"], None)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    import yaml

    cfg = resolve("toy-corr", "vae", overrides=["train.steps=11"])
    path = tmp_path / "saved.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert resolve(config_file=path) == cfg


def test_a_one_section_command_takes_only_its_section_in_order() -> None:
    """`bench` and `data prepare` read `--set` through the same parser as `run`."""
    base = {"name": "vae", "latent_dim": 2}
    texts = ["model.latent_dim=3", "model.widths=[8, 16]", "model.latent_dim=4"]
    assert section_overrides(texts, "model", "bench", base) == {
        "name": "vae",
        "latent_dim": 4,
        "widths": [8, 16],
    }
    with pytest.raises(
        UserError, match=r"^bench only takes model\.KEY=VALUE overrides, got 'train\.steps=1'$"
    ):
        section_overrides(["train.steps=1"], "model", "bench")
    with pytest.raises(UserError, match=r"^data prepare only takes task\.KEY=VALUE overrides"):
        section_overrides(["task.a.b=1"], "task", "data prepare")


def test_every_numeric_key_of_the_shared_sections_has_a_range() -> None:
    """A new train/eval number without a range would let 0, -1 or NaN through to a traceback."""
    cfg = resolve("toy-corr", "vae")
    for section in SECTIONS[2:]:
        options = getattr(cfg, section)
        hints = typing.get_type_hints(type(options))
        for f in dataclasses.fields(options):
            kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
            if int in kinds or float in kinds:
                assert of(f).range is not None, f"{section}.{f.name} has no range"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.steps=0", "'train.steps' must be an integer >= 1, got 0"),
        ("train.lr=.nan", "'train.lr' must be a finite number > 0, got nan"),
        ("task.n_val=0", "'task.n_val' must be an integer >= 1, got 0"),
        ("output.run_id=../x", "'output.run_id' got '../x'"),
    ],
)
def test_values_out_of_range_are_refused_when_the_config_resolves(
    override: str, fragment: str
) -> None:
    with pytest.raises(UserError) as err:
        resolve("toy-corr", "vae", overrides=[override])
    assert fragment in str(err.value)


def test_flatten_names_keys_as_set_does() -> None:
    assert flatten({"train": {"lr": 1, "x": {}}, "a": 2}) == {"train.lr": 1, "train.x": {}, "a": 2}
