"""Names that users, scripts and tests rely on (ARCHITECTURE.md): topics, the consumer group,
model aliases and experiments. Topics travel as one `Topics` value, never as module constants:
a prefix lets staging and production (and the tests) share one cluster."""

from __future__ import annotations

import re
from dataclasses import dataclass

from neuropredict.errors import ConfigError

PRODUCTION_ALIAS = "production"
CHALLENGER_ALIAS = "challenger"
EXPERIMENT_NAME = "neuropredict"
SERVING_EXPERIMENT_NAME = "neuropredict-serving"
PROMOTIONS_EXPERIMENT_NAME = "model-promotions"  # a run per alias move: MLflow keeps no alias history
EXCHANGE_TZ = "America/New_York"  # naive timestamps are this exchange's local time

TOPIC_PREFIX_ENV = "NEUROPREDICT_TOPIC_PREFIX"
_LEGAL = re.compile(r"[A-Za-z0-9._-]*")  # what Kafka allows in a topic name


@dataclass(frozen=True)
class Topics:
    """The product's topics and consumer group; with a prefix, another set of the same."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if not _LEGAL.fullmatch(self.prefix) or len(self.prefix) > 200:
            raise ConfigError(f"topic prefix {self.prefix!r} is not usable in Kafka topic names: use letters, "
                              f"digits, '.', '_' and '-' (at most 200)")

    @property
    def prices(self) -> str:
        return f"{self.prefix}stock_prices"

    @property
    def predictions(self) -> str:
        return f"{self.prefix}predicted_prices"

    @property
    def shadow_predictions(self) -> str:
        """Forecasts of the versions scored beside production (never mixed into predictions)."""
        return f"{self.prefix}predicted_prices_shadow"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}stock_prices_dlq"

    @property
    def serving_state(self) -> str:
        """Each symbol's recent ticks and open forecast, keyed by symbol, compacted: what a worker
        restores from, whatever the input topic's retention (stream/changelog.py)."""
        return f"{self.prefix}serving_state"

    @property
    def group(self) -> str:
        """The serving workers' consumer group."""
        return f"{self.prefix}neuropredict-serving"

    @property
    def all(self) -> tuple[str, ...]:
        return self.prices, self.predictions, self.dead_letters, self.shadow_predictions, self.serving_state
