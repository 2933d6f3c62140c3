"""The service's parts, built once by the app factory (``service.main.create_app``) and handed to the
routes through one dependency (``service.api.deps.PartsDep``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service.cache import Cache
from service.core.config import Settings
from service.experiment_registry import ExperimentRegistry
from service.experiment_serving import ExperimentServing
from service.impressions import ImpressionRecorder
from service.metrics import Metrics
from service.model_store import ModelStore
from service.scoring import ScoringSlots
from service.training_runs import TrainingRuns
from service.writes import InteractionWriter


@dataclass(frozen=True)
class ServiceParts:
    settings: Settings
    metrics: Metrics
    engine: Engine
    session_factory: Callable[[], Session]
    cache: Cache
    store: ModelStore  # the served model version
    scoring: ScoringSlots  # where a request's model work runs
    writer: InteractionWriter
    training_runs: TrainingRuns
    recorder: ImpressionRecorder  # the impressions of answers sent, written off the request path
    experiments: ExperimentRegistry
    experiment_serving: ExperimentServing  # which arm answers a request while an experiment runs
