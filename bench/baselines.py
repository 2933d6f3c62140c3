"""Baselines on ml-100k, seeds 0..4: rating-random (RMSE, MAE) and strong (Recall@20, Recall@50, NDCG@100).

    python bench/baselines.py [--source /path/to/ml-100k] [--out bench/out/baselines.json]

Prints one table per protocol (mean ± sample std over seeds), writes the JSON and a bar
chart beside it (same name, .png). Uses the same ``baseline_report`` as
``python -m trainer baselines``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from errors import UserError  # noqa: E402
from interactions.datasets import get_dataset  # noqa: E402
from trainer.commands.baselines import write_json  # noqa: E402
from trainer.evaluation import baseline_report, format_table  # noqa: E402

DATASET = "ml-100k"
PROTOCOLS = ("rating-random", "strong")
SEEDS = (0, 1, 2, 3, 4)


def bar_chart(reports: dict[str, dict], path: Path) -> None:
    """One panel per protocol: each baseline's headline metrics, error bars = std over seeds."""
    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 3.6))
    for ax, (protocol, report) in zip(axes, reports.items()):
        names, metrics = list(report["results"]), report["metrics"]
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            values = report["results"][name]
            x = [i + j * width for i in range(len(metrics))]
            ax.bar(x, [values[m]["mean"] for m in metrics], width, yerr=[values[m]["std"] for m in metrics],
                   capsize=3, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))], metrics)
        ax.set_title(f"{report['dataset']} · {protocol} · seeds {SEEDS[0]}..{SEEDS[-1]}")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="local ml-100k folder or .zip (offline)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/baselines.json"), help="JSON to write")
    args = parser.parse_args(argv)
    try:
        interactions = get_dataset(DATASET, source=args.source)
        reports = {}
        for protocol in PROTOCOLS:
            started = time.perf_counter()
            reports[protocol] = baseline_report(interactions, protocol, SEEDS)
            reports[protocol]["seconds"] = round(time.perf_counter() - started, 3)
            print(f"\n{DATASET}, {protocol}, seeds {','.join(map(str, SEEDS))} (mean ± sample std)")
            print(format_table(reports[protocol]["results"], reports[protocol]["metrics"]))
        write_json(reports, args.out)
        bar_chart(reports, args.out.with_suffix(".png"))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
