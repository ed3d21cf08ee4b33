"""What a config field is, declared once on the field itself.

A field of a config dataclass (the shared sections in `config.py`, a task's or a
model's options) says with `option(...)` what its values may be and what it
changes. Every rule about config keys is derived from that declaration, never
listed by hand:

- the range checks before a run (`config.check_ranges`);
- the config hash that groups a configuration's seeds (`aggregate.config_hash`):
  the fields that change what a run computes, seeds aside;
- the checkpoint fingerprint (`checkpoint.fingerprint`): the fields that change
  the trained weights;
- which keys `hvbench run --resume` and `hvbench eval` may change
  (`run.saved_config`): the ones declared `resume=True`, and the evaluation's
  own (`affects="scores"`);
- which keys may differ between a sweep's entry and the run folder it would
  skip or resume (`sweep`): the ones that change no number.

A field declared with a plain default is the safe case: it changes the trained
weights, may not change on resume, and has no range beyond its type (a float
must be finite). This module imports nothing from hvbench, so a task, a model
or a plug-in can declare its options with it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

KEY = "hvbench"  # the field metadata key holding its `Option`
ALWAYS_THERE: Any = object()  # `absent_means` of a field every run record has held

# What a field's value can change: the trained weights (and so every number), only the
# scores computed from them (the final evaluation's settings), or nothing a run computes
# (where it is written, logged, how often it checkpoints).
Affects = Literal["weights", "scores", "nothing"]


@dataclass(frozen=True)
class Range:
    """The values a number may take: `holds(value)`, described as `rule` in the error."""

    holds: Callable[[Any], bool]
    rule: str


AT_LEAST_1 = Range(lambda v: v >= 1, "an integer >= 1")
AT_LEAST_0 = Range(lambda v: v >= 0, "an integer >= 0")
POSITIVE = Range(lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = Range(lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
FRACTION = Range(lambda v: 0 <= v <= 1, "a fraction in [0, 1]")
SEED = Range(lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")
FINITE = Range(math.isfinite, "a finite number")  # every float without a range of its own


@dataclass(frozen=True)
class Option:
    """What one config field is (see the module docstring for who reads it)."""

    affects: Affects = "weights"
    # a repeat's seed: runs that differ only here are seeds of one configuration
    seed: bool = False
    # `hvbench run --resume` may give it a new value (only fields that affect nothing)
    resume: bool = False
    range: Range | None = None
    # the field came after run records existed: a record without it meant this value, so at
    # this value it is left out of the fingerprint and the config hash and older records match
    absent_means: Any = ALWAYS_THERE

    def __post_init__(self) -> None:
        if self.resume and self.affects != "nothing":
            raise ValueError("only a field that affects nothing may change on resume")


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    affects: Affects = "weights",
    seed: bool = False,
    resume: bool = False,
    range: Range | None = None,
    absent_means: Any = ALWAYS_THERE,
) -> Any:
    """A dataclass field declaring what it is: `steps: int = option(2000, range=AT_LEAST_1)`."""
    declared = Option(affects, seed, resume, range, absent_means)
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={KEY: declared}
    )


def of(f: dataclasses.Field) -> Option:
    """A field's declaration; a field declared without `option` is the safe default."""
    return f.metadata.get(KEY, Option())


def declared(cls: type | None) -> dict[str, Option]:
    """Field name → `Option` of a config dataclass (empty for None: an unknown task or model)."""
    if cls is None or not dataclasses.is_dataclass(cls):
        return {}
    return {f.name: of(f) for f in dataclasses.fields(cls)}


def at_absent_value(what: Option, value: Any) -> bool:
    """Whether `value` is what a record from before the field existed meant."""
    return what.absent_means is not ALWAYS_THERE and value == what.absent_means


# The rules every consumer derives from a field's declaration, named once.
def changes_weights(what: Option) -> bool:
    """In the checkpoint fingerprint: a checkpoint trained with another value is another run's."""
    return what.affects == "weights"


def changes_numbers(what: Option) -> bool:
    """A sweep refuses to skip or resume a run whose saved value differs from the sweep's."""
    return what.affects != "nothing"


def names_configuration(what: Option) -> bool:
    """In the config hash: runs differing here are different configurations, not seeds."""
    return what.affects != "nothing" and not what.seed


def may_resume(what: Option) -> bool:
    """`hvbench run --resume` may change it."""
    return what.resume


def may_reevaluate(what: Option) -> bool:
    """`hvbench eval` may change it: it changes the scores, never the trained weights."""
    return what.affects == "scores"
