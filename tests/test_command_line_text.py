"""A text key set on the command line holds the text typed: Hydra reads a bare ``15e01131`` as a
float (``inf``), ``1e05`` as ``100000.0`` and ``true`` as a boolean, and a text key would then
hold that value turned back into text (a run id's start that names no run, a renamed folder)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from experiment.process import strings_as_typed


@dataclass
class Inner:
    experiment: str = "cadence"
    port: int = 8000


@dataclass
class Schema:
    run_id: str | None = None
    name: str = "default"
    out: str = "outputs"
    seed: int = 0
    rate: float = 0.5
    flag: bool = False
    tracking: Inner = field(default_factory=Inner)


def _composed(overrides: list[str]):
    """What Hydra's command line makes of ``overrides`` on :class:`Schema` (its own parser,
    then the typed merge)."""
    cfg = OmegaConf.structured(Schema)
    parser = OverridesParser.create()
    for override in parser.parse_overrides(overrides):
        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
    return cfg


@pytest.mark.parametrize(
    ("override", "key", "hydra_made", "typed"),
    [
        ("run_id=15e01131", "run_id", "inf", "15e01131"),
        ("name=1e05", "name", "100000.0", "1e05"),
        ("out=1_000", "out", "1000", "1_000"),
        ("name=true", "name", "True", "true"),
        ("tracking.experiment=3.", "tracking.experiment", "3.0", "3."),
        ("name=NaN", "name", "nan", "NaN"),
    ],
)
def test_a_text_key_holds_what_was_typed(override, key, hydra_made, typed):
    cfg = _composed([override])
    assert OmegaConf.select(cfg, key) == hydra_made  # what Hydra alone leaves
    assert OmegaConf.select(strings_as_typed(cfg, [override]), key) == typed


def test_numbers_quoted_text_and_other_keys_are_left_as_hydra_made_them():
    overrides = [
        "seed=3",
        "rate=1e-3",
        "flag=true",
        "tracking.port=8080",
        "run_id='15e01131'",  # quoted: text already
        "name=12345678",  # an int turned into the same text
        "out=runs/1e3",  # not a bare number
    ]
    cfg = strings_as_typed(_composed(overrides), overrides)
    assert (cfg.seed, cfg.rate, cfg.flag, cfg.tracking.port) == (3, 1e-3, True, 8080)
    assert (cfg.run_id, cfg.name, cfg.out) == ("15e01131", "12345678", "runs/1e3")


def test_deletions_and_unknown_keys_are_skipped():
    cfg = _composed(["name=x"])
    strings_as_typed(cfg, ["~name", "nothing.here=1e3", "name"])
    assert cfg.name == "x" and "nothing" not in cfg
