"""Figures logged to MLflow: loss components, dev curves, a sweep's parallel coordinates, the embedding map.

Plain matplotlib on the Agg canvas (no pyplot, so no global figure registry to leak and no display
needed); each function returns a :class:`matplotlib.figure.Figure` for ``RunTracker.log_figure`` or
``fig.savefig``. Empty or partial inputs give a figure that says so rather than an exception: a plot
never stops a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

LOSS_COMPONENTS = ("task", "lm", "soft", "manifold", "total", "aligner")  # lm: generative tasks
_MAX_CATEGORY_TICKS = 12


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _empty(fig: Figure, ax: Any, message: str) -> Figure:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


# ------------------------------------------------------------------------------------ loss components


def _normal_key(key: str) -> str:
    key = key.lower().replace("/", "_").replace("-", "_").replace(".", "_")
    for prefix in ("train_", "epoch_", "mean_"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _component(row: Mapping[str, Any], component: str) -> float | None:
    """The value of a loss component in one history row: ``loss_task``, ``task_loss``, ``train/loss_task``,
    ``task``... (``loss`` alone counts as the total)."""
    names = {component, f"loss_{component}", f"{component}_loss"}
    if component == "total":
        names.add("loss")
    for key, value in row.items():
        if _normal_key(str(key)) in names:
            return _number(value)
    return None


def plot_loss_components(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Per-epoch loss components: task, soft, manifold and total on the left, the aligner's loss (its own
    objective and scale) on the right. ``history`` holds one dict per epoch, with an optional ``epoch``."""
    rows = list(history)
    epochs = [_number(r.get("epoch")) for r in rows]
    xs = [e if e is not None else i + 1 for i, e in enumerate(epochs)]
    series = {c: [_component(r, c) for r in rows] for c in LOSS_COMPONENTS}
    present = [c for c in LOSS_COMPONENTS if any(v is not None for v in series[c])]
    has_aligner = "aligner" in present
    fig = _figure(10.0 if has_aligner else 6.5, 4.0)
    axes = fig.subplots(1, 2) if has_aligner else [fig.subplots(1, 1)]
    main = [c for c in present if c != "aligner"]
    styles = {"task": "-", "lm": ":", "soft": "--", "manifold": "-.", "total": "-"}
    ax = axes[0]
    if not main:
        _empty(fig, ax, "no student loss components in the history")
    for comp in main:
        pts = [(x, y) for x, y in zip(xs, series[comp]) if y is not None]
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], styles.get(comp, "-"), marker="o", label=comp,
            linewidth=2.4 if comp == "total" else 1.6, color="black" if comp == "total" else None,
        )
    if main:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title("Student loss components")
        ax.grid(alpha=0.3)
        ax.legend()
    if has_aligner:
        ax2 = axes[1]
        pts = [(x, y) for x, y in zip(xs, series["aligner"]) if y is not None]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="tab:purple", label="aligner")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("loss")
        ax2.set_title("Aligner loss")
        ax2.grid(alpha=0.3)
    return fig


# ------------------------------------------------------------------------------------------ dev curves


def plot_dev_curves(curves: Mapping[str, Sequence[float]], metric_name: str = "dev metric") -> Figure:
    """One line per label (a trial, the baseline...): the dev metric after each epoch; the best point of
    each curve is ringed."""
    fig = _figure(7.0, 4.2)
    ax = fig.subplots(1, 1)
    drawn = 0
    for label, values in curves.items():
        pts = [(i + 1, _number(v)) for i, v in enumerate(values)]
        pts = [(x, y) for x, y in pts if y is not None]
        if not pts:
            continue
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=str(label))
        best = max(pts, key=lambda p: p[1])
        ax.scatter([best[0]], [best[1]], s=140, facecolors="none", edgecolors=line.get_color(), linewidths=1.5)
        drawn += 1
    if not drawn:
        return _empty(fig, ax, "no dev-metric values yet")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} per epoch")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small", ncols=1 if drawn <= 8 else 2)
    return fig


# ---------------------------------------------------------------------------------- parallel coords


def _lookup(trial: Mapping[str, Any], name: str) -> Any:
    """``trial[name]``, else in its ``config``/``params``/``metrics`` sub-dict, else by dotted path."""
    if name in trial:
        return trial[name]
    for sub in ("config", "params", "metrics"):
        inner = trial.get(sub)
        if isinstance(inner, Mapping) and name in inner:
            return inner[name]
    node: Any = trial.get("config", trial)
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class _Axis:
    """One vertical axis: maps raw values to [0, 1] and knows its tick labels."""

    def __init__(self, name: str, values: list[Any]):
        self.name = name
        present = [v for v in values if v is not None]
        numbers = [_number(v) for v in present]
        self.categorical = not present or any(n is None for n in numbers)
        self.log = False
        if self.categorical:
            self.categories = sorted({str(v) for v in present}, key=_natural_key)
            self.ticks = [(self._pos_cat(c), c) for c in self.categories]
            if len(self.ticks) > _MAX_CATEGORY_TICKS:
                step = math.ceil(len(self.ticks) / _MAX_CATEGORY_TICKS)
                self.ticks = self.ticks[::step]
            return
        nums = [n for n in numbers if n is not None]
        lo, hi = min(nums), max(nums)
        self.log = lo > 0 and hi / lo >= 100
        self.lo, self.hi = (math.log10(lo), math.log10(hi)) if self.log else (lo, hi)
        picks = [lo, hi] if lo == hi else [lo, (10 ** ((self.lo + self.hi) / 2)) if self.log else (lo + hi) / 2, hi]
        self.ticks = [(self.position(v), f"{v:.3g}") for v in dict.fromkeys(picks)]

    def _pos_cat(self, text: str) -> float:
        k = len(self.categories)
        return 0.5 if k == 1 else self.categories.index(text) / (k - 1)

    def position(self, value: Any) -> float:
        if value is None:
            return float("nan")
        if self.categorical:
            return self._pos_cat(str(value))
        number = _number(value)
        if number is None or (self.log and number <= 0):
            return float("nan")
        x = math.log10(number) if self.log else number
        return 0.5 if self.hi == self.lo else (x - self.lo) / (self.hi - self.lo)


def _natural_key(text: str) -> tuple[Any, ...]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def plot_parallel_coordinates(
    trials: Sequence[Mapping[str, Any]], params: Sequence[str], metric: str
) -> Figure:
    """A sweep at a glance: one line per trial across one axis per parameter plus the metric, each axis
    normalised to its own range (log scale when a positive range spans 100x or more), categorical values
    mapped to evenly spaced ticks with their labels, lines coloured by the metric. Trials without a
    numeric ``metric`` are left out (counted in the title)."""
    names = list(params) + [metric]
    fig = _figure(max(6.0, 1.9 * len(names) + 1.5), 4.8)
    ax = fig.subplots(1, 1)
    scored = [(t, _number(_lookup(t, metric))) for t in trials]
    kept = [(t, m) for t, m in scored if m is not None]
    if not kept:
        return _empty(fig, ax, f"no trial has a numeric {metric!r} yet")
    axes = [_Axis(n, [_lookup(t, n) for t, _ in kept]) for n in names]
    metrics = [m for _, m in kept]
    norm = Normalize(vmin=min(metrics), vmax=max(metrics) if max(metrics) > min(metrics) else min(metrics) + 1e-9)
    cmap = colormaps["viridis"]
    xs = np.arange(len(names), dtype=float)
    order = sorted(range(len(kept)), key=lambda i: metrics[i])  # best drawn last (on top) for mode=max
    for i in order:
        trial, m = kept[i]
        ys = [a.position(_lookup(trial, a.name)) for a in axes]
        ax.plot(xs, ys, color=cmap(norm(m)), alpha=0.85, linewidth=1.6, marker="o", markersize=3)
    for x, a in zip(xs, axes):
        ax.axvline(x, color="0.3", linewidth=1.0, zorder=0)
        for y, label in a.ticks:
            ax.text(x + 0.03, y, label, fontsize=7.5, va="center", ha="left", color="0.15",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xticks(xs)
    ax.set_xticklabels([a.name + (" (log)" if a.log else "") for a in axes], rotation=15, ha="right", fontsize=8.5)
    ax.set_yticks([])
    ax.set_ylim(-0.06, 1.06)
    ax.set_xlim(-0.15, len(names) - 0.6)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    dropped = len(trials) - len(kept)
    title = f"{len(kept)} trials coloured by {metric}"
    ax.set_title(title + (f" ({dropped} without a {metric} left out)" if dropped else ""))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric, pad=0.01)
    return fig


# ------------------------------------------------------------------------------------- embedding map


def plot_embedding_map(
    p_t: np.ndarray, p_s: np.ndarray, labels: Sequence[Any] | np.ndarray | None = None, max_points: int = 2000
) -> Figure:
    """Teacher projections ``p_t`` (hollow circles) and student projections ``p_s`` (filled triangles) of
    the same examples in one PCA plane fitted on both, coloured by label (discrete labels get a legend,
    continuous ones a colour bar); pairs are joined by faint lines when there are few."""
    from sklearn.decomposition import PCA

    t = np.asarray(p_t, dtype=np.float64)
    s = np.asarray(p_s, dtype=np.float64)
    if t.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"p_t and p_s must be 2-D arrays of the same shape, got {t.shape} and {s.shape}")
    lab = None if labels is None else np.asarray(list(labels), dtype=object)
    if lab is not None and len(lab) != len(t):
        raise ValueError(f"labels has {len(lab)} entries for {len(t)} rows")
    fig = _figure(7.2, 6.0)
    ax = fig.subplots(1, 1)
    if len(t) < 2 or t.shape[1] < 2:
        return _empty(fig, ax, "need at least 2 examples of dimension >= 2")
    if len(t) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(len(t), size=max_points, replace=False))
        t, s = t[keep], s[keep]
        lab = lab[keep] if lab is not None else None
    pca = PCA(n_components=2, random_state=0).fit(np.concatenate([t, s]))
    zt, zs = pca.transform(t), pca.transform(s)

    colours: Any
    legend: list[Line2D] = []
    if lab is None:
        colours = np.array(["tab:blue"] * len(t), dtype=object)
    else:
        numbers = [_number(v) for v in lab]
        distinct = sorted({str(v) for v in lab}, key=_natural_key)
        continuous = all(n is not None for n in numbers) and len(distinct) > 20
        if continuous:
            norm = Normalize(vmin=min(numbers), vmax=max(numbers))
            cmap = colormaps["viridis"]
            colours = np.array([cmap(norm(n)) for n in numbers], dtype=object)
            fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="label")
        else:
            palette = colormaps["tab10" if len(distinct) <= 10 else "tab20"]
            index = {c: i for i, c in enumerate(distinct)}
            colours = np.array([palette(index[str(v)] % palette.N) for v in lab], dtype=object)
            legend = [
                Line2D([], [], marker="s", linestyle="", color=palette(i % palette.N), label=c)
                for i, c in enumerate(distinct[:20])
            ]
    colour_list = list(colours)
    if len(t) <= 300:
        segments = np.stack([zt, zs], axis=1)
        ax.add_collection(LineCollection(segments, colors="0.75", linewidths=0.6, zorder=1))
    ax.scatter(zt[:, 0], zt[:, 1], s=34, marker="o", facecolors="none", edgecolors=colour_list, linewidths=1.2,
               zorder=2)
    ax.scatter(zs[:, 0], zs[:, 1], s=26, marker="^", c=colour_list, alpha=0.85, zorder=3)
    cos = np.sum(t * s, axis=1) / np.maximum(np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1), 1e-12)
    var = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({var[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({var[1]:.0%} of variance)")
    ax.set_title(f"Teacher vs student projections ({len(t)} examples; mean cos = {float(np.mean(cos)):.3f})")
    ax.grid(alpha=0.25)
    markers = [
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.2", label="teacher p_t"),
        Line2D([], [], marker="^", linestyle="", color="0.2", label="student p_s"),
    ]
    ax.legend(handles=markers + legend, fontsize="small", loc="best", ncols=1 if len(legend) <= 8 else 2)
    return fig


# ---------------------------------------------------------------------------------- ablation study

def plot_ablation(cells: Sequence[Mapping[str, Any]], probes: Mapping[str, Mapping[str, Any]]) -> Figure:
    """One panel per setup: the test metric of every variant (mean, 95 % interval, each seed as a dot),
    with the baseline's mean as a dashed line and the linear probe's dev score as a dotted one."""
    setups = list(dict.fromkeys(str(c["setup"]) for c in cells))
    fig = _figure(max(7.0, 0.8 * max((sum(1 for c in cells if c["setup"] == s) for s in setups), default=1)),
                  3.6 * max(len(setups), 1))
    axes = fig.subplots(max(len(setups), 1), 1, squeeze=False)[:, 0]
    if not setups:
        return _empty(fig, axes[0], "no cells")
    for ax, setup in zip(axes, setups):
        rows = [c for c in cells if c["setup"] == setup]
        x = np.arange(len(rows))
        means = [_number(c.get("mean")) for c in rows]
        errs = [_number(c.get("ci95")) or 0.0 for c in rows]
        colors = ["0.55" if c["variant"] == "baseline" else "tab:blue" if str(c["variant"]).startswith("armada")
                  else "tab:orange" for c in rows]
        ax.bar(x, [m if m is not None else 0.0 for m in means], yerr=errs, color=colors, alpha=0.75, capsize=4)
        for i, c in enumerate(rows):
            pts = [_number(v) for v in c.get("seed_scores") or []]
            pts = [p for p in pts if p is not None]
            ax.scatter([i] * len(pts), pts, s=12, color="k", zorder=3)
        base = next((m for c, m in zip(rows, means) if c["variant"] == "baseline" and m is not None), None)
        if base is not None:
            ax.axhline(base, color="0.3", linestyle="--", linewidth=1, label="baseline mean")
        probe = _number((probes.get(setup) or {}).get("probe_dev_metric"))
        if probe is not None:
            ax.axhline(probe, color="tab:green", linestyle=":", linewidth=1.5, label="linear probe (dev)")
        finite = [m for m in means if m is not None] + ([probe] if probe is not None else [])
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05) if max(finite) <= 1 else None)
        ax.set_xticks(x, [str(c["variant"]) for c in rows], rotation=30, ha="right", fontsize="small")
        ax.set_title(f"{setup}: test metric at the best dev epoch")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small", loc="lower right")
    return fig
