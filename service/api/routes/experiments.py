"""Experiments: created, listed and stopped with the admin key; their results with a read key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from service.api.deps import AdminAccess, ExperimentsDep, ReadAccess, SessionDep
from service.api.routing import AccessFirstRoute
from service.errors import ApiError
from service.experiment_report import experiment_report
from service.schemas import ErrorBody, ExperimentIn, ExperimentOut
from storage import crud
from storage.crud import online

admin = APIRouter(prefix="/admin", tags=["experiments"], dependencies=[AdminAccess], route_class=AccessFirstRoute)
router = APIRouter(tags=["experiments"], dependencies=[ReadAccess], route_class=AccessFirstRoute)

ExperimentId = Annotated[str, Path(min_length=1, max_length=64, description="The experiment's id.")]


def _out(row: online.ExperimentRow) -> ExperimentOut:
    iso = lambda moment: moment and online.as_utc(moment).isoformat()  # noqa: E731
    return ExperimentOut(id=row.id, kind=row.kind, status="running" if row.active else "stopped", definition=row.definition,
                         created_at=iso(row.created_at), started_at=iso(row.started_at), stopped_at=iso(row.stopped_at))


@admin.post("/experiments", response_model=ExperimentOut, status_code=201, responses={409: {"model": ErrorBody}})
def create_experiment(experiments: ExperimentsDep, body: ExperimentIn) -> ExperimentOut:
    """Start an experiment now. Requests that name no model are then served by it: A/B, each user's arm
    (a sticky seeded hash of the user id); interleaving, the team-draft mix of the two arms' lists.
    422 naming the field: unknown model or version, shares not summing to 1, ...; 409 when the id exists
    (running or stopped) or another experiment is running."""
    return _out(experiments.create(body.model_dump(exclude_none=True)))


@admin.post("/experiments/{experiment_id}/stop", response_model=ExperimentOut)
def stop_experiment(experiments: ExperimentsDep, experiment_id: ExperimentId) -> ExperimentOut:
    """Stop it: requests are served as before it (its results stay readable). Stopping it again changes nothing."""
    return _out(experiments.stop(experiment_id))


@admin.get("/experiments", response_model=list[ExperimentOut])
def list_experiments(session: SessionDep) -> list[ExperimentOut]:
    with crud.reads(session) as db:
        return [_out(row) for row in online.experiments(db)]


@router.get("/experiments/{experiment_id}", response_model=dict[str, Any])
def experiment_results(session: SessionDep, experiment_id: ExperimentId) -> dict[str, Any]:
    """Per arm: impressions, clicks, CTR, hit-rate@k, MRR of the clicked item, rating-weighted gain
    (rating / log2(rank + 1)) and conversions, each with a 95% interval; the decision (an always-valid
    sequential test, with the fixed-horizon p-value beside it) and the minimum detectable effect at the
    present sample."""
    row = online.experiment(session, experiment_id)
    if row is None:
        raise ApiError(404, "unknown_experiment", f"no experiment {experiment_id!r}", {"id": experiment_id})
    return experiment_report(session, row)
