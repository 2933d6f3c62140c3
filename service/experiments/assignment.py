"""An experiment's definition and the sticky assignment of a user to one of its arms.

A user u of experiment e (seed s) draws a number uniform on [0, 1) from a keyed hash,

    x = int(blake2b(f"{s}|{e.id}|{u}", 8 bytes)) / 2**64,

the same on every process and machine (Python's ``hash()`` is salted per process), so a user
stays in one arm across requests and replicas, and a new seed reshuffles everyone. With a
holdout share h, users with x < h are held out (they are served the popularity list); the
others rescale y = (x - h) / (1 - h), uniform on [0, 1) again, and land in arm j when
S_{j-1} <= y < S_j, with S_j = share_1 + ... + share_j in the arms' declared order. In an
A/B experiment the arm is the list a user sees; in an interleaving one every user outside the
holdout sees both arms' lists mixed (``interleaving.team_draft``), and the arm drawn by the
shares only names the list served if interleaving cannot run.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
HOLDOUT = "holdout"  # the arm name of held-out users, reserved when a holdout share is set
HOLDOUT_MODEL = "popularity"
SHARE_TOLERANCE = 1e-9
KINDS = ("ab", "interleaving")


@dataclass(frozen=True)
class Arm:
    """A model at a version (None: whatever version is latest when the request is served)."""

    name: str
    model: str
    version: str | None = None
    share: float = 0.0


@dataclass(frozen=True)
class Experiment:
    id: str
    kind: Literal["ab", "interleaving"]
    arms: tuple[Arm, ...]
    seed: int = 0
    holdout: float = 0.0  # share of users held out on the popularity list, before the arms' shares
    shadow: bool = False  # the challengers score the same requests, logged, not served
    started_at: datetime | None = None
    stopped_at: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        validate(self)

    @property
    def holdout_arm(self) -> Arm | None:
        return Arm(HOLDOUT, HOLDOUT_MODEL, None, self.holdout) if self.holdout > 0 else None

    def running(self, now: datetime) -> bool:
        """Started (or no start set) and not yet stopped at ``now``."""
        return (self.started_at is None or self.started_at <= now) and (self.stopped_at is None or now < self.stopped_at)

    def to_config(self) -> dict[str, Any]:
        """The JSON/TOML section ``from_config`` reads back to the same experiment."""
        return {
            "id": self.id, "kind": self.kind, "seed": self.seed, "holdout": self.holdout, "shadow": self.shadow,
            "arms": [{"name": a.name, "model": a.model, "version": a.version, "share": a.share} for a in self.arms],
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
            "stopped_at": None if self.stopped_at is None else self.stopped_at.isoformat(),
        }


def validate(experiment: Experiment) -> None:
    """ValueError naming the first thing wrong with ``experiment``."""
    e = experiment
    if not isinstance(e.id, str) or not SLUG.match(e.id):
        raise ValueError(f"experiment id {e.id!r} must be a slug: lowercase letters, digits, '-' or '_', 1-63 characters")
    if e.kind not in KINDS:
        raise ValueError(f"experiment {e.id}: kind {e.kind!r} must be one of {', '.join(KINDS)}")
    if isinstance(e.seed, bool) or not isinstance(e.seed, int):
        raise ValueError(f"experiment {e.id}: seed {e.seed!r} must be an integer")
    if not e.arms:
        raise ValueError(f"experiment {e.id}: needs at least one arm")
    if e.kind == "interleaving" and len(e.arms) != 2:
        raise ValueError(f"experiment {e.id}: interleaving needs exactly 2 arms, got {len(e.arms)}")
    if not isinstance(e.shadow, bool):
        raise ValueError(f"experiment {e.id}: shadow {e.shadow!r} must be true or false")
    if not (isinstance(e.holdout, (int, float)) and 0 <= e.holdout < 1):
        raise ValueError(f"experiment {e.id}: holdout {e.holdout!r} must be a share in [0, 1)")
    names = [a.name for a in e.arms]
    for arm in e.arms:
        if not isinstance(arm.name, str) or not SLUG.match(arm.name):
            raise ValueError(f"experiment {e.id}: arm name {arm.name!r} must be a slug")
        if not isinstance(arm.model, str) or not arm.model:
            raise ValueError(f"experiment {e.id}: arm {arm.name} needs a model name")
        if arm.version is not None and (not isinstance(arm.version, str) or not arm.version):
            raise ValueError(f"experiment {e.id}: arm {arm.name} version must be a version name or null (latest)")
        if not (isinstance(arm.share, (int, float)) and 0 < arm.share <= 1):
            raise ValueError(f"experiment {e.id}: arm {arm.name} share {arm.share!r} must be in (0, 1]")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"experiment {e.id}: arm names must be unique, repeated: {', '.join(duplicates)}")
    if e.holdout > 0 and HOLDOUT in names:
        raise ValueError(f"experiment {e.id}: arm name {HOLDOUT!r} is reserved for the holdout")
    total = math.fsum(a.share for a in e.arms)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ValueError(f"experiment {e.id}: arm shares must sum to 1, they sum to {total!r}")
    for key in ("started_at", "stopped_at"):
        moment = getattr(e, key)
        if moment is not None and (not isinstance(moment, datetime) or moment.utcoffset() is None):
            raise ValueError(f"experiment {e.id}: {key} {moment!r} must be a time with a time zone (e.g. ...Z)")
    if e.started_at is not None and e.stopped_at is not None and e.stopped_at < e.started_at:
        raise ValueError(f"experiment {e.id}: stopped_at {e.stopped_at.isoformat()} is before started_at")


def unit_draw(seed: int, experiment_id: str, user_id: str) -> float:
    """The user's uniform number on [0, 1) in this experiment (see the module docstring)."""
    digest = hashlib.blake2b(f"{seed}|{experiment_id}|{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(experiment: Experiment, user_id: str) -> Arm:
    """The arm ``user_id`` is in: the holdout arm, or one of ``experiment.arms`` by their shares."""
    x = unit_draw(experiment.seed, experiment.id, str(user_id))
    holdout = experiment.holdout_arm
    if holdout is not None and x < experiment.holdout:
        return holdout
    y = (x - experiment.holdout) / (1 - experiment.holdout)
    cumulative = 0.0
    for arm in experiment.arms:
        cumulative += arm.share
        if y < cumulative:
            return arm
    return experiment.arms[-1]  # y within rounding of 1 when the shares sum to 1 - 1e-9


_CONFIG_KEYS = {"id", "kind", "arms", "seed", "holdout", "shadow", "started_at", "stopped_at"}
_ARM_KEYS = {"name", "model", "version", "share"}


def from_config(section: dict[str, Any]) -> Experiment:
    """An experiment from a parsed TOML/JSON section; unknown keys are refused, not ignored.

    Arms without a share split the traffic equally (all arms must then omit it)."""
    if not isinstance(section, dict):
        raise ValueError(f"an experiment is a table/object, got {type(section).__name__}")
    unknown = sorted(set(section) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"experiment: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(_CONFIG_KEYS))})")
    missing = sorted({"id", "kind", "arms"} - set(section))
    if missing:
        raise ValueError(f"experiment: missing {', '.join(missing)}")
    raw_arms = section["arms"]
    if not isinstance(raw_arms, list) or not all(isinstance(a, dict) for a in raw_arms):
        raise ValueError(f"experiment {section['id']!r}: arms must be a list of tables/objects")
    for raw in raw_arms:
        unknown = sorted(set(raw) - _ARM_KEYS)
        if unknown:
            raise ValueError(f"experiment {section['id']!r}: arm keys {', '.join(unknown)} are unknown "
                             f"(known: {', '.join(sorted(_ARM_KEYS))})")
        if "name" not in raw or "model" not in raw:
            raise ValueError(f"experiment {section['id']!r}: each arm needs a name and a model")
    with_share = sum("share" in raw for raw in raw_arms)
    if 0 < with_share < len(raw_arms):
        raise ValueError(f"experiment {section['id']!r}: give every arm a share or none (then equal shares)")
    arms = tuple(Arm(raw["name"], raw["model"], raw.get("version"),
                     raw["share"] if with_share else 1 / max(1, len(raw_arms))) for raw in raw_arms)
    return Experiment(
        id=section["id"], kind=section["kind"], arms=arms, seed=section.get("seed", 0),
        holdout=section.get("holdout") or 0.0, shadow=section.get("shadow", False),
        started_at=_timestamp(section, "started_at"), stopped_at=_timestamp(section, "stopped_at"),
    )


def _timestamp(section: dict[str, Any], key: str) -> datetime | None:
    value = section.get(key)
    if value is None or isinstance(value, datetime):  # TOML parses datetimes itself
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"experiment {section.get('id')!r}: {key} {value!r} is not an ISO 8601 time") from None
