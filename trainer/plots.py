"""The learning-curve PNG published beside each model: training loss and validation metric per epoch."""

from __future__ import annotations

import io
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402


def png_bytes(fig: Any) -> bytes:
    """The laid-out figure as PNG bytes: what the artifacts writer stores (and checksums)."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def learning_curve_png(
    title: str, curve: Sequence[dict[str, Any]], metric: str | None, best_epoch: int | None = None
) -> bytes:
    """Loss on the left axis, ``metric`` (the early-stopping one) on the right; the kept epoch marked."""
    fig, loss_ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        epochs = [point["epoch"] for point in curve]
        losses = [point.get("loss") for point in curve]
        if any(loss is not None for loss in losses):
            loss_ax.plot(epochs, losses, color="tab:blue", marker="." if len(curve) < 30 else None, label="train loss")
        loss_ax.set_xlabel("epoch")
        loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        loss_ax.set_ylabel("train loss", color="tab:blue")
        if metric and any(metric in point for point in curve):
            metric_ax = loss_ax.twinx()
            points = [(p["epoch"], p[metric]) for p in curve if metric in p]
            metric_ax.plot(*zip(*points), color="tab:orange", marker="o" if len(points) < 30 else None)
            metric_ax.set_ylabel(f"validation {metric}", color="tab:orange")
        if best_epoch:
            loss_ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
            loss_ax.annotate(f"kept: epoch {best_epoch} ", (best_epoch, 1.0), xycoords=("data", "axes fraction"),
                             xytext=(-3, -12), textcoords="offset points", ha="right", color="grey", fontsize=8)
        if all(loss is None for loss in losses):
            loss_ax.text(0.5, 0.5, "closed form: no training epochs", ha="center", va="center",
                         transform=loss_ax.transAxes)
        loss_ax.set_title(title)
        return png_bytes(fig)
    finally:
        plt.close(fig)
