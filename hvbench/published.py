"""Published numbers: cards in `baselines/published.yaml`, shown beside measured rows.

A published number comes from other code, another budget and often another
estimator, so it is shown marked *published*, with its estimator and split,
and never ranked with the rows this harness measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hvbench.errors import UserError

FIELDS = ("task", "model", "metric", "value", "unit", "estimator", "split", "source")


def cards_path() -> Path:
    """`baselines/published.yaml` in a checkout, `hvbench/baselines/` in a wheel."""
    import hvbench.baselines

    return Path(hvbench.baselines.__path__[0]) / "published.yaml"


def load(path: Path | None = None) -> list[dict[str, Any]]:
    """Every card, each checked for the fields a reader needs to judge the number."""
    path = path or cards_path()
    if not path.is_file():
        return []
    try:
        cards = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(cards, list):
        raise UserError(f"{path} must hold a list of cards")
    for i, card in enumerate(cards):
        missing = [f for f in FIELDS if not isinstance(card, dict) or card.get(f) in (None, "")]
        if missing:
            raise UserError(f"{path}: card {i + 1} has no {missing[0]!r}; each card needs {', '.join(FIELDS)}")
    return cards
