"""What a registered model version says about itself in the MLflow UI: the evaluation figures of
the train.py run it was exported from (normalized value, ceiling share and the margin over the
best baseline heuristic, each with its 95 % interval, and that run's id), as tags and as one
section of its description. Other sections (a promotion's evidence) keep their own text:
:func:`set_section` replaces only the section it is given."""

from __future__ import annotations

import re

import mlflow
from mlflow.entities import Run

SECTION = "evaluation"
"""the description section :func:`describe_version` writes"""
TAG_PREFIX = "evaluation."
"""every tag :func:`describe_version` sets starts with this"""


def _figure(metrics: dict[str, float], name: str, low: str, high: str, signed: bool) -> str | None:
    """``estimate [low, high]`` of a logged metric (the estimate alone where it has no bounds;
    None where the run did not log it)."""
    if name not in metrics:
        return None
    f = "+.3f" if signed else ".3f"
    text = f"{metrics[name]:{f}}"
    if low in metrics and high in metrics:
        text += f" [{metrics[low]:{f}}, {metrics[high]:{f}}]"
    return text


def evaluation_tags(run: Run) -> dict[str, str]:
    """The version's tags from the evaluation train.py logged in ``run``: ``evaluation.run_id``,
    ``evaluation.normalized_value``, ``evaluation.ceiling_share``, ``evaluation.margin`` (the
    normalized value over ``evaluation.baseline``), ``evaluation.retention_margin``,
    ``evaluation.anxious_margin`` (each ``estimate [low, high]``, 95 %), ``evaluation.clients``
    (fresh clients x days x evaluation seeds). Figures the run did not log are left out."""
    m, params = run.data.metrics, run.data.params
    figures = {
        "normalized_value": _figure(
            m,
            "eval/normalized_value",
            "eval/normalized_value_ci_low",
            "eval/normalized_value_ci_high",
            False,
        ),
        "ceiling_share": _figure(
            m,
            "eval/ceiling_share",
            "eval/ceiling_share_ci_low",
            "eval/ceiling_share_ci_high",
            False,
        ),
    }
    for tag, name in (
        ("margin", "normalized_value"),
        ("retention_margin", "retention"),
        ("anxious_margin", "anxious_click_share"),
    ):
        key = f"eval/margin/{name}"
        figures[tag] = _figure(m, key, f"{key}_ci_low", f"{key}_ci_high", True)
    tags = {f"{TAG_PREFIX}{k}": v for k, v in figures.items() if v is not None}
    tags[f"{TAG_PREFIX}run_id"] = run.info.run_id
    if "baseline" in run.data.tags:
        tags[f"{TAG_PREFIX}baseline"] = run.data.tags["baseline"]
    if {"eval.num_clients", "eval.horizon_days", "eval.num_seeds"} <= params.keys():
        tags[f"{TAG_PREFIX}clients"] = (
            f"{int(params['eval.num_clients']):,} fresh clients x {params['eval.horizon_days']} "
            f"days x {params['eval.num_seeds']} evaluation seed(s)"
        )
    return tags


def evaluation_section(run: Run, tags: dict[str, str], link: str) -> str:
    """The description's evaluation section: the figures of ``tags`` in sentences."""
    t = {k.removeprefix(TAG_PREFIX): v for k, v in tags.items()}
    name = run.data.tags.get("mlflow.runName", run.info.run_id)
    lines = [
        f"**Evaluation** (run [{name}]({link}), `{run.info.run_id}`"
        + (f", {t['clients']}" if "clients" in t else "")
        + "):",
        "",
    ]
    if "normalized_value" in t:
        lines.append(
            f"* normalized value {t['normalized_value']} (0 = never sending, 1 = the oracle)"
        )
    if "ceiling_share" in t:
        lines.append(f"* ceiling share {t['ceiling_share']} (1 = the deployable ceiling)")
    if "margin" in t:
        lines.append(
            f"* over {t.get('baseline', 'the best baseline')} on the same clients: normalized "
            f"value {t['margin']}"
            + (f", retention {t['retention_margin']}" if "retention_margin" in t else "")
            + (f", anxious-click share {t['anxious_margin']}" if "anxious_margin" in t else "")
        )
    lines += ["", "Intervals are 95 % (bootstrap; margins paired on the same clients)."]
    return "\n".join(lines)


def _markers(key: str) -> tuple[str, str]:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,40}", key):
        raise ValueError(
            f"a description section key is lowercase letters, digits, _ and -, got {key!r}"
        )
    return f"<!-- {key} -->", f"<!-- /{key} -->"


def merge_section(description: str | None, key: str, text: str) -> str:
    """``description`` with its section ``key`` (between ``<!-- key -->`` and ``<!-- /key -->``)
    replaced by ``text``, or ``text`` appended as that section; the rest is kept as it was."""
    begin, end = _markers(key)
    block = f"{begin}\n{text}\n{end}"
    current = description or ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(current):
        return pattern.sub(lambda _: block, current, count=1)
    return f"{current.rstrip()}\n\n{block}" if current.strip() else block


def set_section(name: str, version: str | int, key: str, text: str) -> str:
    """Write ``text`` as section ``key`` of model version ``name`` ``version``'s description,
    keeping its other sections; returns the new description."""
    client = mlflow.MlflowClient()
    found = client.get_model_version(name, str(version))
    description = merge_section(found.description, key, text)
    client.update_model_version(name, str(version), description=description)
    return description


def version_link(ui: str, name: str, version: str | int) -> str:
    """The MLflow UI's page of a model version: ``<ui>/#/models/<name>/versions/<version>``."""
    return f"{ui.rstrip('/')}/#/models/{name}/versions/{version}"


def describe_version(name: str, version: str | int, run_id: str, ui: str) -> str:
    """Tag model version ``name`` ``version`` with the evaluation figures of train.py run
    ``run_id`` (:func:`evaluation_tags`) and write them as its description's evaluation section;
    returns the version's page in the UI (``ui``: the UI's base address)."""
    from experiment.reporting import run_link

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    tags = evaluation_tags(run)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    link = run_link(ui, run.info.experiment_id, run_id)
    set_section(name, version, SECTION, evaluation_section(run, tags, link))
    return version_link(ui, name, version)
