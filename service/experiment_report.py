"""``GET /experiments/{id}``: an experiment's per-arm metrics, intervals and decision.

The database sums each arm's impressions and feedback (``crud.online.arm_aggregates``: one row per
arm) and counts the interleaving wins; ``service.experiments.stats`` turns the sums into metrics
with 95% intervals and the decision rule. The sequential test's p-value may only fall from look to
look: each look's is stored with the experiment, and the next look starts from it.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy.orm import Session

from service.experiment_registry import experiment_of
from service.experiments.assignment import HOLDOUT
from service.experiments.stats import ArmCounts, Report, ab_report, interleaving_report
from storage.crud import online

INTERLEAVED = "interleaved"  # the name of an interleaving experiment's mixed lists among its arms' metrics
INTERLEAVING_LOOK = "interleaving"  # its key among the stored sequential p-values


def _counts(aggregate: online.ArmAggregate | None) -> ArmCounts:
    if aggregate is None:
        return ArmCounts(0)
    a = aggregate
    # every list is k long, so a list with an engaged item has a hit within the top k
    return ArmCounts(a.impressions, a.hits, a.hits, a.conversions, a.clicks, a.reciprocal_rank, a.reciprocal_rank_sq,
                     a.gain, a.gain_sq)


def experiment_report(session: Session, row: online.ExperimentRow) -> dict[str, Any]:
    experiment = experiment_of(row)
    aggregates = {a.arm: a for a in online.arm_aggregates(session, row.id)}
    previous = row.sequential_p_values or {}
    holdout = [HOLDOUT] if experiment.holdout_arm is not None else []
    if experiment.kind == "interleaving":
        a, b = (arm.name for arm in experiment.arms)
        credit = online.interleaving_credit(session, row.id, (a, b))
        counts = {INTERLEAVED: _counts(aggregates.get(None)), **{n: _counts(aggregates.get(n)) for n in holdout}}
        report = interleaving_report(row.id, a, b, credit.wins[a], credit.wins[b], credit.ties, counts,
                                     previous_p_value=previous.get(INTERLEAVING_LOOK, 1.0))
        looks = {INTERLEAVING_LOOK: report.interleaving.sequential_p_value}
    else:
        served = experiment.arms[:1] if experiment.shadow else experiment.arms  # shadow arms are scored, not served
        counts = {arm.name: _counts(aggregates.get(arm.name)) for arm in served} | {n: _counts(aggregates.get(n)) for n in holdout}
        report = ab_report(row.id, counts, experiment.arms[0].name, previous_p_values=previous)
        looks = {c.challenger: c.sequential_p_value for c in report.comparisons}
    if looks != previous:
        online.record_sequential_p_values(session, row.id, looks)
    return {
        "id": row.id, "kind": row.kind, "status": "running" if row.active else "stopped",
        "started_at": row.started_at and online.as_utc(row.started_at).isoformat(),
        "stopped_at": row.stopped_at and online.as_utc(row.stopped_at).isoformat(),
        "definition": row.definition,
        "shadow_impressions": {arm: a.shadow_impressions for arm, a in aggregates.items() if a.shadow_impressions},
        **_finite(Report.to_dict(report)),
    }


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a statistic that is undefined at this sample (no impressions yet) is null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
