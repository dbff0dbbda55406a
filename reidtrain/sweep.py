"""Parameter sweeps of a recipe (Tables 10-11): `[sweep] lambda_intra = [...]` / `beta = [...]`.

    [sweep]
    lambda_intra = [0.0, 0.1, 0.2]     # Table 10: one training + evaluation per value
    beta = [0.0, 0.0625]               # Table 11: the loader re-places the regions (TrainConfig.beta), no re-crop

Every key is a TrainConfig field (not cache / out / model) with a non-empty list of distinct values; several keys
sweep their product, in the order written. `expand_sweep` turns the table into points: (name, train overrides).
The recipe runner trains each model at each point into OUT/runs/<model>@<name> (e.g. intra-inter@lambda=0.1),
and the results table has one row per model and point. All points share the recipe's crop cache: the crop stage's
key is its own config, which a sweep does not touch.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Mapping

from reidkit.typedconfig import ConfigError, from_mapping

from .config import TrainConfig

SHORT_NAMES = {"lambda_intra": "lambda"}          # how a key is written in a point's name
NOT_SWEEPABLE = ("cache", "out", "model")


@dataclass(frozen=True)
class SweepPoint:
    name: str                      # "lambda=0.1", "beta=0.0625", "lambda=0.1,beta=0.0625"; "" without a sweep
    overrides: dict[str, Any]      # [train] keys of this point

    def run_name(self, model: str) -> str:
        """The folder name of `model` trained at this point (OUT/runs/<run name>)."""
        return f"{model}@{self.name}" if self.name else model


def format_value(value: Any) -> str:
    """A swept value as written in a point's name: numbers in at most 6 significant digits (0.1, 0.0625,
    0.104167), other values as their str."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def check_sweep(table: Any, where: str = "") -> dict[str, list]:
    """The [sweep] table checked: TrainConfig keys, each a non-empty list of distinct values that TrainConfig
    accepts. Raises ConfigError naming the key."""
    prefix = f"{where}: " if where else ""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{prefix}[sweep] must be a table of KEY = [values], got {type(table).__name__}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, list] = {}
    for key, values in table.items():
        if key not in fields or key in NOT_SWEEPABLE:
            raise ConfigError(f"{prefix}sweep.{key}: not a sweepable [train] key (TrainConfig fields except "
                              f"{', '.join(NOT_SWEEPABLE)})")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{prefix}sweep.{key}: expected a non-empty list of values, got {values!r}")
        names = [format_value(v) for v in values]
        if len(set(names)) != len(names):
            raise ConfigError(f"{prefix}sweep.{key}: values must be distinct (as written in run names: {names})")
        for v in values:
            try:
                from_mapping(TrainConfig, {key: v}, prefix="sweep.")
            except (ConfigError, ValueError) as e:
                raise ConfigError(f"{prefix}sweep.{key} = {v!r}: {e}") from e
        out[key] = list(values)
    return out


def expand_sweep(table: Mapping[str, list] | None) -> list[SweepPoint]:
    """[sweep] table -> its points in order (the product of the keys' values, the last key varying fastest);
    no table or an empty one -> one point without a name and without overrides."""
    if not table:
        return [SweepPoint("", {})]
    keys = list(table)
    points = []
    for combo in itertools.product(*(table[k] for k in keys)):
        name = ",".join(f"{SHORT_NAMES.get(k, k)}={format_value(v)}" for k, v in zip(keys, combo))
        points.append(SweepPoint(name, dict(zip(keys, combo))))
    return points


def run_names(models: list[str], points: list[SweepPoint]) -> dict[str, tuple[str, SweepPoint]]:
    """run name -> (model, point) for every model at every point, model by model."""
    return {p.run_name(m): (m, p) for m in models for p in points}
