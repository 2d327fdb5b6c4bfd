"""Realism targets as data: the file format and its checks, and the real datasets' protocols
(on small files with known answers, and on the published files where this machine has them)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml

from realism import data
from realism.targets import (
    Target,
    Targets,
    check_parameters,
    load_targets,
    parameter_names,
    write_targets,
)
from simulate.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GOOD = {
    "source": "a firm's report",
    "targets": [
        {"statistic": "email/open_rate", "target": 0.24, "band": [0.18, 0.30]},
        {
            "statistic": "bank/decline_1_to_10plus",
            "target": 3.6,
            "band": [2.5, ".inf"],
            "weight": 2,
        },
    ],
}
KNOWN = {"email/open_rate", "email/click_rate", "bank/decline_1_to_10plus"}


def _file(tmp_path: Path, body) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_a_targets_file_round_trips(tmp_path):
    targets = load_targets(_file(tmp_path, GOOD), KNOWN)
    assert targets.names() == ["email/open_rate", "bank/decline_1_to_10plus"]
    decline = targets["bank/decline_1_to_10plus"]
    assert decline.high == math.inf and decline.weight == 2.0
    assert decline.holds(40.0) and not decline.holds(2.4)
    again = load_targets(write_targets(targets, tmp_path / "again.yaml"), KNOWN)
    assert again == targets


def _edit(change):
    body = yaml.safe_load(yaml.safe_dump(GOOD))
    change(body)
    return body


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b["targets"][1].pop("statistic"), "entry 1 lacks \\['statistic'\\]"),
        (lambda b: b["targets"][0].pop("band"), "entry 0 \\(email/open_rate\\) lacks \\['band'\\]"),
        (
            lambda b: b["targets"][0].__setitem__("band", [0.3, 0.4]),
            "entry 0 \\(email/open_rate\\): band \\[0.3, 0.4\\] excludes its own target 0.24",
        ),
        (
            lambda b: b["targets"][0].__setitem__("statistic", "email/opn_rate"),
            "unknown statistic 'email/opn_rate' \\(did you mean 'email/open_rate'\\?\\)",
        ),
        (
            lambda b: b["targets"].append(dict(b["targets"][0])),
            "statistic 'email/open_rate' appears twice",
        ),
        (lambda b: b["targets"][0].__setitem__("weight", 0), "weight must be > 0"),
        (lambda b: b["targets"][0].__setitem__("target", ".nan"), "target must be a number"),
        (
            lambda b: b["targets"][0].__setitem__("colour", "red"),
            "unknown field\\(s\\) \\['colour'\\]",
        ),
        (lambda b: b.__setitem__("targets", []), "no targets"),
    ],
)
def test_a_bad_targets_file_fails_before_any_work_naming_the_entry(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_targets(_file(tmp_path, _edit(change)), KNOWN)


def test_unknown_parameters_are_named():
    names = parameter_names()
    assert names and all(n.startswith(("population.", "env.response.")) for n in names)
    assert check_parameters(names[:2]) == names[:2]
    wrong = names[0] + "x"
    with pytest.raises(
        ConfigError, match=f"unknown parameter '{wrong}' \\(did you mean '{names[0]}'"
    ):
        check_parameters([names[0], wrong])


def test_the_committed_targets_files_load():
    for name in ("financial_services", "hillstrom", "bank_campaign"):
        targets = load_targets(ROOT / "targets" / f"{name}.yaml")
        assert all(t.holds(t.target) for t in targets.targets)


def test_hillstrom_protocol_on_a_file_with_known_answers(tmp_path):
    rows = ["recency,segment,visit,conversion,spend"]
    # recency 2: no e-mail 1 visit of 4; e-mail 3 of 4 (one conversion); recency 10: 0 of 2 vs 1 of 2
    rows += ["2,No E-Mail,1,0,0", "2,No E-Mail,0,0,0", "2,No E-Mail,0,0,0", "2,No E-Mail,0,0,0"]
    rows += [
        "2,Mens E-Mail,1,1,9.5",
        "2,Womens E-Mail,1,0,0",
        "2,Mens E-Mail,1,0,0",
        "2,Womens E-Mail,0,0,0",
    ]
    rows += [
        "10,No E-Mail,0,0,0",
        "10,No E-Mail,0,0,0",
        "10,Mens E-Mail,1,0,0",
        "10,Womens E-Mail,0,0,0",
    ]
    rows += ["6,No E-Mail,0,0,0", "6,Mens E-Mail,0,0,0"]
    path = tmp_path / "h.csv"
    path.write_text("\n".join(rows) + "\n")
    stats = data.hillstrom_statistics(path)
    assert list(stats) == data.hillstrom_statistic_names()
    assert stats["hillstrom/visit_rate/no_email/recency_1_4"] == 0.25
    assert stats["hillstrom/visit_rate/email/recency_1_4"] == 0.75
    assert stats["hillstrom/conversion_rate/email/recency_1_4"] == 0.25
    assert stats["hillstrom/visit_lift/recency_9_12"] == 0.5
    assert stats["hillstrom/visit_rate/no_email"] == pytest.approx(1 / 7)
    assert stats["hillstrom/visit_rate/email"] == pytest.approx(4 / 7)
    targets = data.hillstrom_targets(stats)
    overall = targets["hillstrom/visit_rate/email"]
    bucket = targets["hillstrom/visit_rate/email/recency_1_4"]
    assert overall.high - overall.target == pytest.approx(0.015)
    assert bucket.high - bucket.target == pytest.approx(0.025)
    assert targets["hillstrom/conversion_rate/email"].high - targets[
        "hillstrom/conversion_rate/email"
    ].target == pytest.approx(0.003)


def test_bank_protocol_on_a_file_with_known_answers(tmp_path):
    lines = ['"campaign";"duration";"y"']
    lines += ['1;100;"yes"', '1;100;"no"', '2;100;"yes"', '2;100;"no"', '2;100;"no"', '2;100;"no"']
    lines += [f'{k};100;"no"' for k in range(3, 10)] + [f'{k};100;"yes"' for k in range(3, 10)]
    lines += ['12;100;"yes"', '15;100;"no"', '10;100;"no"', '11;100;"no"']
    path = tmp_path / "b.csv"
    path.write_text("\n".join(lines) + "\n")
    stats = data.bank_statistics(path)
    assert stats["bank/success_rate/contact_1"] == 0.5
    assert stats["bank/relative_success/contact_2"] == 0.5  # 1 of 4, relative to 1 of 2
    assert stats["bank/relative_success/contact_10plus"] == 0.5  # 12, 15, 10, 11 pooled: 1 of 4
    assert stats["bank/decline_1_to_10plus"] == 2.0
    assert data.bank_targets(stats)["bank/decline_1_to_10plus"].low == 2.5


def test_missing_columns_and_missing_files_are_named(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("recency,visit\n1,0\n")
    with pytest.raises(ConfigError, match="lacks column\\(s\\) \\['segment', 'conversion'\\]"):
        data.hillstrom_statistics(path)
    with pytest.raises(ConfigError, match="set \\$CADENCE_REALDATA"):
        data.dataset(data.HILLSTROM, tmp_path)


def _real_folder() -> Path:
    folder = data.data_dir()
    if not (folder / data.HILLSTROM).is_file() or not (folder / data.BANK).is_file():
        pytest.skip(f"the published datasets are not at {folder} on this machine")
    return folder


def test_published_files_give_the_published_headline_figures_and_the_committed_targets():
    folder = _real_folder()
    hill = data.hillstrom_statistics(data.dataset(data.HILLSTROM, folder))
    assert round(hill["hillstrom/visit_rate/no_email"] * 100, 2) == 10.62
    assert round(hill["hillstrom/conversion_rate/no_email"] * 100, 2) == 0.57
    bank = data.bank_statistics(data.dataset(data.BANK, folder))
    assert round(bank["bank/success_rate"] * 100, 2) == 11.27
    assert round(bank["bank/success_rate/contact_1"] * 100, 1) == 13.0
    assert (
        round(
            bank["bank/relative_success/contact_10plus"]
            * bank["bank/success_rate/contact_1"]
            * 100,
            1,
        )
        == 3.6
    )
    assert load_targets(ROOT / "targets" / "hillstrom.yaml") == data.hillstrom_targets(hill)
    assert load_targets(ROOT / "targets" / "bank_campaign.yaml") == data.bank_targets(bank)


def test_the_data_command_writes_the_committed_targets_files(tmp_path):
    """``python calibrate.py mode=data`` (formerly ``python -m realism.data``): both protocols'
    tables and the two targets files, byte for byte the committed ones."""
    folder = _real_folder()
    printed = data.write_real_targets(folder, out=tmp_path)
    assert printed.startswith("| Hillstrom protocol | value |")
    assert "| Bank campaign protocol | value |" in printed
    for name in ("hillstrom", "bank_campaign"):
        assert f"wrote {tmp_path / name}.yaml" in printed
        written = (tmp_path / f"{name}.yaml").read_text()
        assert written == (ROOT / "targets" / f"{name}.yaml").read_text()


def test_another_version_of_a_published_file_is_refused(tmp_path):
    folder = _real_folder()
    shutil.copy(folder / data.BANK, tmp_path / data.BANK)
    with open(tmp_path / data.BANK, "a") as f:
        f.write(
            '56;"housemaid";"married";"basic.4y";"no";"no";"no";"telephone";"may";"mon";1;1;999;0;"nonexistent";1.1;93.994;-36.4;4.857;5191;"yes"\n'
        )
    with pytest.raises(ConfigError, match="not the published"):
        data.dataset(data.BANK, tmp_path)
    assert data.dataset(data.BANK, tmp_path, verify=False).is_file()


def test_target_holds_is_inclusive():
    t = Target("x", 1.0, 0.5, 1.5)
    assert t.holds(0.5) and t.holds(1.5) and not t.holds(1.5000001)
    assert Targets("s", (t,))["x"] is t
