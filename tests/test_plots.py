"""The figures logged to MLflow render on the Agg canvas and show what they claim."""

from __future__ import annotations

import io

import numpy as np
import pytest

from armada_ray.plots import (
    plot_dev_curves,
    plot_embedding_map,
    plot_loss_components,
    plot_parallel_coordinates,
)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    assert data.startswith(b"\x89PNG")
    return data


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [
        label.get_text() for ax in fig.axes for label in ax.get_xticklabels()
    ]


def test_loss_components_accepts_the_usual_key_spellings() -> None:
    history = [
        {"epoch": e, "loss_task": 1 / (e + 1), "soft_loss": 0.5 / (e + 1), "train/loss_manifold": 0.2,
         "loss": 1.7 / (e + 1), "aligner_loss": 2.0 / (e + 1)}
        for e in range(0, 3)
    ]
    fig = plot_loss_components(history)
    main, aligner = fig.axes
    assert [line.get_label() for line in main.get_lines()] == ["task", "soft", "manifold", "total"]
    assert list(main.get_lines()[0].get_xdata()) == [0, 1, 2]  # epoch 0 kept
    assert list(aligner.get_lines()[0].get_ydata()) == pytest.approx([2.0, 1.0, 2 / 3])
    png_bytes(fig)

    only_student = plot_loss_components([{"loss_task": 1.0, "loss_total": 1.0}, {"loss_task": 0.5, "loss_total": 0.6}])
    assert len(only_student.axes) == 1
    assert list(only_student.axes[0].get_lines()[0].get_xdata()) == [1, 2]
    png_bytes(plot_loss_components([]))  # nothing yet: a figure that says so


def test_dev_curves_one_line_per_label() -> None:
    fig = plot_dev_curves({"baseline": [0.5, 0.6, 0.62], "armada alpha=0.3": [0.55, 0.7, 0.66], "empty": []})
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["baseline", "armada alpha=0.3"]
    png_bytes(fig)


def test_parallel_coordinates_normalises_each_axis() -> None:
    trials = [
        {"loss.alpha": 0.2, "train.lr": 1e-5, "loss.manifold": "cosine", "dev_metric": 0.50},
        {"loss.alpha": 0.8, "train.lr": 1e-3, "loss.manifold": "euclid", "dev_metric": 0.70},
        {"config": {"loss": {"alpha": 0.5}, "train": {"lr": 1e-4}, "loss.manifold": "pointwise"},
         "metrics": {"dev_metric": 0.60}},
        {"loss.alpha": 0.4, "train.lr": 1e-4, "loss.manifold": "cosine"},  # still running: no metric
    ]
    fig = plot_parallel_coordinates(trials, ["loss.alpha", "train.lr", "loss.manifold"], "dev_metric")
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the plot and the metric colour bar
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 4]
    assert len(lines) == 3
    for line in lines:
        ys = np.asarray(line.get_ydata(), dtype=float)
        assert np.all((ys >= 0) & (ys <= 1))
    # best trial (0.70) is drawn last: alpha 0.8 -> 1.0, lr 1e-3 -> top of the log axis, euclid -> middle of 3
    assert list(lines[-1].get_ydata()) == pytest.approx([1.0, 1.0, 0.5, 1.0])
    labels = texts(fig)
    assert {"cosine", "euclid", "pointwise"} <= set(labels)
    assert "train.lr (log)" in labels and "loss.alpha" in labels
    assert "1 without a dev_metric left out" in ax.get_title()
    png_bytes(fig)
    png_bytes(plot_parallel_coordinates([{"a": 1}], ["a"], "dev_metric"))


def test_embedding_map_plots_teacher_and_student_in_one_plane() -> None:
    rng = np.random.default_rng(0)
    p_t = rng.normal(size=(60, 32))
    p_s = p_t + 0.1 * rng.normal(size=p_t.shape)
    fig = plot_embedding_map(p_t, p_s, ["business", "sport", "tech"] * 20)
    ax = fig.axes[0]
    teacher, student = ax.collections[-2:]
    assert teacher.get_offsets().shape == (60, 2) and student.get_offsets().shape == (60, 2)
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"teacher p_t", "student p_s", "sport"}
    assert "mean cos = 0.99" in ax.get_title()
    png_bytes(fig)

    continuous = plot_embedding_map(p_t, p_s, np.linspace(0, 5, 60))  # a regression target: colour bar
    assert len(continuous.axes) == 2
    png_bytes(plot_embedding_map(p_t, p_s, None))
    with pytest.raises(ValueError, match="same shape"):
        plot_embedding_map(p_t, p_s[:, :8], None)
