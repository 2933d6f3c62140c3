"""`python -m trainer baselines`: the baselines on one dataset and protocol, mean ± std over seeds.

    python -m trainer baselines --dataset ml-100k --protocol strong --seeds 0,1,2,3,4 --json out.json

Rating protocols run global-mean and bias; ranking protocols run popularity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from errors import UserError
from trainer.protocols import PROTOCOLS


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]; anything else is a one-line error."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, e.g. 0,1,2 (got {text!r})") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds must be distinct non-negative integers, e.g. 0,1,2 (got {text!r})")
    return seeds


def write_json(report: dict, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def baselines(
    dataset: Annotated[str, typer.Option("--dataset", help="A MovieLens dataset by name, e.g. ml-100k.")],
    source: Annotated[
        Optional[Path], typer.Option("--source", help="Local folder or .zip of the --dataset (offline).")
    ] = None,
    protocol: Annotated[str, typer.Option("--protocol", help=f"One of: {', '.join(PROTOCOLS)}.")] = "rating-random",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated split seeds.")] = "0,1,2,3,4",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the results here as JSON.")] = None,
) -> None:
    """Evaluate the baselines (the floor every model must beat) on a dataset and protocol."""
    from interactions.datasets import get_dataset
    from trainer.evaluation import baseline_report, format_table

    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    seed_list = parse_seeds(seeds)
    interactions = get_dataset(dataset, source=source)
    report = baseline_report(interactions, protocol, seed_list)
    typer.echo(f"{report['dataset']}, protocol {protocol}, seeds {seeds} (mean ± sample std)")
    typer.echo(format_table(report["results"], report["metrics"]))
    if json_out is not None:
        write_json(report, json_out)
        typer.echo(f"wrote {json_out}")
