"""Realism targets as data: a file names each statistic, its target, a band and a weight.

A firm can bring its own campaign reports and hold-out results in the same format::

    source: where the figures come from (free text, kept with the scorecard)
    targets:
      - statistic: hillstrom/visit_rate/no_email
        target: 0.1062
        band: [0.0912, 0.1212]     # in band: low <= simulated <= high (.inf allowed)
        weight: 1.0                # in the calibration objective (default 1)
        note: optional free text

Everything is checked before any work: a missing field, an unknown statistic, a band that
excludes its own target, a duplicate, a non-finite target or a weight that is not positive is
a :class:`simulate.config.ConfigError` naming the entry.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from simulate.config import ConfigError, PopulationConfig, ResponseConfig

FIELDS = ("statistic", "target", "band")
OPTIONAL = ("weight", "note")


@dataclass(frozen=True)
class Target:
    """One statistic the simulator should reproduce."""

    statistic: str
    target: float
    low: float
    high: float
    weight: float = 1.0
    note: str = ""

    def holds(self, simulated: float) -> bool:
        """Whether ``simulated`` lies in the band."""
        return self.low <= simulated <= self.high

    def as_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "statistic": self.statistic,
            "target": _plain(self.target),
            "band": [_plain(self.low), _plain(self.high)],
            "weight": _plain(self.weight),
        }
        if self.note:
            entry["note"] = self.note
        return entry


@dataclass(frozen=True)
class Targets:
    """A targets file: where the figures come from and the statistics."""

    source: str
    targets: tuple[Target, ...]

    def names(self) -> list[str]:
        return [t.statistic for t in self.targets]

    def __getitem__(self, statistic: str) -> Target:
        for t in self.targets:
            if t.statistic == statistic:
                return t
        raise KeyError(statistic)


def _plain(value: float) -> float | str:
    return value if math.isfinite(value) else (".inf" if value > 0 else "-.inf")


def _number(where: str, key: str, value: Any, allow_infinite: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    if math.isnan(value) or (not allow_infinite and math.isinf(value)):
        raise ConfigError(f"{where}: {key} must be finite, got {value!r}")
    return float(value)


def parse_targets(
    data: Any, known: Collection[str] | None = None, origin: str = "targets"
) -> Targets:
    """Check and build :class:`Targets` from parsed YAML; ``known`` limits the statistic names."""
    if not isinstance(data, dict) or not isinstance(data.get("targets"), list):
        raise ConfigError(f"{origin}: expected a mapping with a 'targets' list")
    extra = sorted(set(data) - {"source", "targets"})
    if extra:
        raise ConfigError(f"{origin}: unknown top-level key(s) {extra}; use 'source' and 'targets'")
    out: list[Target] = []
    seen: set[str] = set()
    for i, entry in enumerate(data["targets"]):
        where = f"{origin}: entry {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with {list(FIELDS)}")
        name = entry.get("statistic")
        if isinstance(name, str):
            where = f"{origin}: entry {i} ({name})"
        missing = [k for k in FIELDS if k not in entry]
        if missing:
            raise ConfigError(f"{where} lacks {missing}")
        unknown = sorted(set(entry) - set(FIELDS) - set(OPTIONAL))
        if unknown:
            raise ConfigError(f"{where} has unknown field(s) {unknown}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: statistic must be a non-empty name, got {name!r}")
        if known is not None and name not in known:
            raise ConfigError(f"{where}: unknown statistic{_did_you_mean(name, known)}")
        if name in seen:
            raise ConfigError(f"{where}: statistic {name!r} appears twice")
        seen.add(name)
        target = _number(where, "target", entry["target"])
        band = entry["band"]
        if not isinstance(band, list) or len(band) != 2:
            raise ConfigError(f"{where}: band must be [low, high], got {band!r}")
        low, high = (_number(where, "band", _inf(b), allow_infinite=True) for b in band)
        if not low <= target <= high:
            raise ConfigError(f"{where}: band [{low}, {high}] excludes its own target {target}")
        weight = _number(where, "weight", entry.get("weight", 1.0))
        if weight <= 0:
            raise ConfigError(f"{where}: weight must be > 0, got {weight}")
        out.append(Target(name, target, low, high, weight, str(entry.get("note", ""))))
    if not out:
        raise ConfigError(f"{origin}: no targets")
    return Targets(str(data.get("source", "")), tuple(out))


def _inf(value: Any) -> Any:
    """YAML writes infinity as ``.inf``; accept the string forms too."""
    if isinstance(value, str) and value.strip().lower() in (".inf", "inf", "+.inf", "+inf"):
        return math.inf
    if isinstance(value, str) and value.strip().lower() in ("-.inf", "-inf"):
        return -math.inf
    return value


def load_targets(path: str | Path, known: Collection[str] | None = None) -> Targets:
    """Read and check a targets file (see the module notes)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"targets: no file {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"targets: {path} is not valid YAML: {exc}") from exc
    return parse_targets(data, known, origin=str(path))


def write_targets(targets: Targets, path: str | Path) -> Path:
    """Write ``targets`` in the file format :func:`load_targets` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"source": targets.source, "targets": [t.as_entry() for t in targets.targets]}
    text = yaml.safe_dump(body, sort_keys=False, width=100)
    path.write_text(text.replace("'.inf'", ".inf").replace("'-.inf'", "-.inf"))
    return path


def parameter_names() -> list[str]:
    """Names a calibration may search: the population's and the response model's scalar
    numbers, as ``population.<field>`` and ``env.response.<field>``."""
    names = []
    for prefix, schema in (("population", PopulationConfig), ("env.response", ResponseConfig)):
        for f in dataclasses.fields(schema):
            if ("lo" in f.metadata or "hi" in f.metadata) and "length" not in f.metadata:
                names.append(f"{prefix}.{f.name}")
    return names


def parameter_tree() -> dict[str, Any]:
    """Every name of :func:`parameter_names`, nested by its dots, each set to None: the keys of
    ``python calibrate.py mode=fit range.<name>=LOW:HIGH``."""
    out: dict[str, Any] = {}
    for name in parameter_names():
        *groups, key = name.split(".")
        node = out
        for group in groups:
            node = node.setdefault(group, {})
        node[key] = None
    return out


def check_parameters(names: Iterable[str]) -> list[str]:
    """``names`` if each is a parameter a calibration may search, else a ConfigError naming it."""
    allowed = parameter_names()
    out = []
    for name in names:
        if name not in allowed:
            raise ConfigError(f"params: unknown parameter{_did_you_mean(name, allowed)}")
        out.append(name)
    return out


def _did_you_mean(name: str, options: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" {name!r} (did you mean {close[0]!r}?)" if close else f" {name!r}"
