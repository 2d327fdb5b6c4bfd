"""Plots people would rather look at than read: learning curves, cadence maps, KPI bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simulate.labels import CHANNELS, SEGMENTS, SLOT_KEYS, TONES

if TYPE_CHECKING:
    from evaluation.rollout import Rollout

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported at the first plot: a command that draws
    nothing (``export.py``, a refused ``train.py`` or ``evaluate.py`` config) starts about 0.4 s
    sooner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(history: Sequence[tuple[int, dict[str, float]]], path: Path) -> Path | None:
    """Training metrics against client-days of experience; None if nothing was recorded."""
    plt = _pyplot()
    names = [
        n
        for n in (
            "train/episode_return",
            "train/reward_per_client_day",
            "train/lambda_churn",
            "train/lambda_anxiety",
        )
        if any(n in m for _, m in history)
    ]
    if not names:
        return None
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        points = [(step, m[name]) for step, m in history if name in m]
        ax.plot(*zip(*points, strict=True))
        ax.set_ylabel(name.split("/", 1)[1])
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("client-days of experience")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cadence(rollouts: Sequence[Rollout], path: Path, title: str) -> Path:
    """When in the day and week each tone and channel is used (messages per 1,000 client-weeks)."""
    plt = _pyplot()
    counts = sum(r.cadence for r in rollouts)
    client_days = sum(len(r.value) for r in rollouts) * rollouts[0].horizon_days / 1000.0
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    panels = (
        (counts.sum(axis=(2, 3)).T, WEEKDAYS, SLOT_KEYS, "slot x weekday"),
        (counts.sum(axis=(0, 3)).T, SLOT_KEYS, TONES, "tone x slot"),
        (counts.sum(axis=(0, 2)).T, SLOT_KEYS, CHANNELS, "channel x slot"),
    )
    for ax, (grid, xs, ys, name) in zip(axes, panels, strict=True):
        image = ax.imshow(grid / client_days * 7, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(xs)), xs, rotation=30)
        ax.set_yticks(range(len(ys)), ys)
        ax.set_title(name)
        fig.colorbar(image, ax=ax, label="per 1,000 client-weeks")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kpi_bars(
    metrics: dict[str, dict[str, tuple[float, float, float]]], names: Sequence[str], path: Path
) -> Path:
    """One panel per KPI: a bar per policy with its 95% CI."""
    plt = _pyplot()
    policies = list(metrics)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        est = np.array([metrics[p][name][0] for p in policies])
        err = np.array(
            [
                [est[i] - metrics[p][name][1], metrics[p][name][2] - est[i]]
                for i, p in enumerate(policies)
            ]
        ).T
        ax.bar(range(len(policies)), est, yerr=err, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(policies)), policies, rotation=60, ha="right", fontsize=8)
        ax.set_title(name.split("/", 1)[1], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tone_mix(rollouts: Sequence[Rollout], path: Path) -> Path:
    """Tone mix of delivered messages by declared goal segment, one panel per policy."""
    plt = _pyplot()
    names = list(dict.fromkeys(r.policy for r in rollouts))
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        mix = sum(r.tone_by_segment for r in rollouts if r.policy == name)
        share = mix / np.maximum(mix.sum(axis=1, keepdims=True), 1)
        left = np.zeros(len(SEGMENTS))
        for k, tone in enumerate(TONES):
            ax.barh(range(len(SEGMENTS)), share[:, k], left=left, label=tone)
            left += share[:, k]
        ax.set_yticks(range(len(SEGMENTS)), SEGMENTS, fontsize=8)
        ax.set_title(name, fontsize=9)
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def retention_curves(rollouts: Sequence[Rollout], path: Path) -> Path:
    """Share of clients still active, by day, per policy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(r.policy for r in rollouts):
        curves = [
            r.alive_by_day for r in rollouts if r.policy == name and r.alive_by_day is not None
        ]
        if curves:
            ax.plot(np.arange(1, len(curves[0]) + 1), np.mean(curves, axis=0), label=name)
    ax.set_xlabel("day")
    ax.set_ylabel("retention")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def crisis_timeline(result, path: Path) -> Path:
    """A crisis study's timeline, one row per policy (first seed): the watched metric that
    alerted first in the touched segment, with and without the breaker; the crisis, the alert,
    each switch and return, the recovery; below, the touched clients lost so far."""
    plt = _pyplot()
    from evaluation.crisis import timeline_series

    crisis = result.crisis
    policies = list(dict.fromkeys(t.policy for t in result.traces))
    fig, axes = plt.subplots(
        2, len(policies), figsize=(6.5 * len(policies), 6.5), squeeze=False, sharex=True
    )
    for col, name in enumerate(policies):
        view = timeline_series(result, name)
        top, bottom = axes[0, col], axes[1, col]
        days = np.arange(len(view["lost"]["off"]))
        for arm, style in (("off", dict(color="tab:red")), ("on", dict(color="tab:blue"))):
            label = "no monitor" if arm == "off" else "monitor + breaker"
            top.plot(days, view["rate"][arm], marker="o", ms=2.5, lw=0.8, label=label, **style)
            bottom.plot(days, view["lost"][arm], lw=1.5, label=label, **style)
        bottom.plot(days, view["lost"]["calm"], lw=1, ls="--", color="grey", label="no crisis")
        for ax in (top, bottom):
            if crisis.start_day is not None:
                end = min(crisis.end_day, len(days) - 1)
                ax.axvspan(crisis.start_day, end, color="orange", alpha=0.12, lw=0)
            for day, event in view["events"]:
                ax.axvline(
                    day,
                    color="tab:green" if event == "return" else "black",
                    lw=0.8,
                    ls="-" if event == "switch" else ":",
                )
            if view["alert"] is not None:
                ax.axvline(view["alert"], color="tab:red", lw=1.2, ls="--")
            if view["recovery"] is not None:
                ax.axvline(view["recovery"], color="tab:purple", lw=1.2, ls="-.")
            ax.grid(alpha=0.3)
        top.set_title(f"{name}: {view['metric']} ({view['segment']})", fontsize=9)
        top.set_ylabel("daily rate")
        bottom.set_ylabel(f"clients lost ({view['touched']})")
        bottom.set_xlabel(
            "day (shaded: crisis; red dashed: alert; black: switch; green dotted: return; "
            "purple: recovered)",
            fontsize=7,
        )
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    fig.suptitle(f"crisis study: {crisis.scenario}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
