"""Publishing a version: written into a temporary folder, fsynced, renamed into place, then ``LATEST``
moved atomically; retention and the removal of what dead writers left, under the registry's lock."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from filelock import FileLock

from errors import UserError
from registry.checksums import file_checksums, refuse_non_finite
from registry.versions import (CHECKSUMS_KEY, COLD_START_DIR, IDS_FILE, LATEST_FILE, LOCK_FILE, MANIFEST_FILE,
                               METRICS_FILE, POPULARITY_FILE, TMP_PREFIX, ArtifactError, latest_version, list_versions,
                               new_version_name, read_json)

if TYPE_CHECKING:
    from models.base import Recommender


def trained_pairs_bytes(matrix: Any) -> bytes:
    """``TRAINED_PAIRS_FILE``'s content: the nonzero pattern of a training matrix, 4 bytes a pair (int32
    column indices; uncompressed: zlib's saving costs time, bench/RESULTS.md, "Figures moved out")."""
    import io

    import numpy as np
    import scipy.sparse as sp

    pattern = sp.csr_matrix(matrix, copy=True)
    pattern.eliminate_zeros()  # a stored zero is no interaction
    pattern.sort_indices()
    buffer = io.BytesIO()
    np.savez(buffer, indptr=pattern.indptr, indices=pattern.indices, shape=np.asarray(pattern.shape, dtype=np.int64))
    return buffer.getvalue()


@dataclass
class StagedModel:
    """A trained model and everything published beside it."""

    model: Recommender
    user_ids: Sequence[Any]  # external id of each row the model was trained with
    item_ids: Sequence[Any]  # external id of each column
    metrics: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)  # extra files, e.g. {"learning_curve.png": ...}
    cold_start: Recommender | None = None  # rating models: the bias baseline fitted on the same matrix


def registry_lock(root: str | Path) -> FileLock:
    """The cross-process lock on the registry. One instance per path in a process, so it is re-entrant:
    a training run holds it for its whole duration and ``publish`` can take it again inside."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"the artifacts directory {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the artifacts directory {root}: {exc.strerror or exc}") from None
    return FileLock(root / LOCK_FILE, is_singleton=True)


def _json_bytes(obj: Any, what: str) -> bytes:
    def default(value: Any) -> Any:
        if hasattr(value, "tolist"):  # numpy scalars and arrays
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    try:
        return json.dumps(obj, indent=2, default=default, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"cannot write {what}: {exc}") from exc


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file, then every folder (deepest first), so the rename publishes durable bytes."""
    for dirpath, _, filenames in os.walk(folder, topdown=False):
        for filename in filenames:
            _fsync_path(Path(dirpath) / filename)
        _fsync_path(Path(dirpath))


def _write_pointer(root: Path, version: str) -> None:
    tmp = root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(version + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / LATEST_FILE)
    _fsync_path(root)


def _remove(path: Path) -> None:
    """Make a folder vanish atomically (rename), then delete it at leisure."""
    if path.name.startswith(TMP_PREFIX):
        target = path
    else:
        target = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}")
        os.rename(path, target)
    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)


def remove_stale_temporaries(root: str | Path) -> list[str]:
    """Delete ``.tmp-*`` left by writers that died. Call only while holding ``registry_lock``."""
    root = Path(root)
    stale = [p for p in root.glob(f"{TMP_PREFIX}*")] if root.is_dir() else []
    for path in stale:
        _remove(path)
    return [p.name for p in stale]


def apply_retention(root: str | Path, keep: int) -> list[str]:
    """Keep the newest ``keep`` versions and the one ``LATEST`` names; delete the rest."""
    if keep < 1:
        raise ArtifactError(f"keep must be at least 1, got {keep}")
    root = Path(root)
    versions = list_versions(root)
    current = latest_version(root)
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
    for version in doomed:
        _remove(root / version)
    return doomed


def _check_carried(source: Path, name: str, checksums: dict[str, dict[str, Any]]) -> None:
    """A model folder copied from a published version must match that version's checksums, so a
    damaged file is never published again under fresh ones (sources without checksums pass)."""
    listed = read_json(source.parent / MANIFEST_FILE, f"manifest of version {source.parent.name}").get(CHECKSUMS_KEY) or {}
    prefix = source.name + "/"
    for relative, entry in listed.items():
        if not relative.startswith(prefix):
            continue
        copied = checksums.get(name + "/" + relative[len(prefix):])
        if copied is None or copied["sha256"] != entry.get("sha256"):
            raise ArtifactError(f"model {name} carried from version {source.parent.name}: {relative} "
                                "does not match its sha256 there (corrupted); nothing published")


def _stage_cold_start(baseline: Recommender, model: Recommender, name: str, folder: Path) -> None:
    if baseline.n_items != model.n_items:
        raise ArtifactError(f"model {name}: a cold-start baseline of {baseline.n_items} items for {model.n_items} items")
    refuse_non_finite(baseline, f"cold-start baseline of {name}")
    baseline.save(folder / COLD_START_DIR)


def publish(
    root: str | Path,
    staged_models: Mapping[str, StagedModel],
    manifest: dict[str, Any],
    *,
    popularity: Mapping[str, Sequence[Any]],
    keep: int = 5,
    carry_from: Mapping[str, str | Path] | None = None,
) -> str:
    """Write a new version atomically, point ``LATEST`` at it, apply retention; return its name.

    ``manifest`` carries everything but the bookkeeping this function fills in (``version``,
    ``created_at``, ``popularity``, the ``files`` checksums and each model's ``path``); ``manifest["models"][name]``
    holds that model's summary (task, metrics, valid_metric, epochs, fit_seconds).
    ``carry_from`` maps a model name to a published model folder copied as is (a model
    this run did not retrain stays served).
    """
    carry_from = dict(carry_from or {})
    if not staged_models and not carry_from:
        raise ArtifactError("nothing to publish: no models")
    if keep < 1:
        raise ArtifactError(f"keep must be at least 1, got {keep}")
    root = Path(root)
    for name in [*staged_models, *carry_from]:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ArtifactError(f"model name {name!r} cannot be a folder name")
    with registry_lock(root):
        remove_stale_temporaries(root)
        version = new_version_name(root)
        staging = root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            entries = dict(manifest.get("models", {}))
            for name, staged in staged_models.items():
                model = staged.model
                if len(staged.user_ids) != model.n_users or len(staged.item_ids) != model.n_items:
                    raise ArtifactError(
                        f"model {name}: {len(staged.user_ids)} user ids x {len(staged.item_ids)} item ids "
                        f"for a model of {model.n_users} x {model.n_items}"
                    )
                refuse_non_finite(model, f"model {name}")
                folder = staging / name
                model.save(folder)
                ids = {"users": [str(u) for u in staged.user_ids], "items": [str(i) for i in staged.item_ids]}
                (folder / IDS_FILE).write_bytes(_json_bytes(ids, f"{name}/{IDS_FILE}"))
                (folder / METRICS_FILE).write_bytes(_json_bytes(staged.metrics, f"{name}/{METRICS_FILE}"))
                for filename, content in staged.files.items():
                    (folder / filename).write_bytes(content)
                entries[name] = {**entries.get(name, {}), "task": model.task, "path": name}
                if staged.cold_start is not None:
                    _stage_cold_start(staged.cold_start, model, name, folder)
                    entries[name]["cold_start"] = staged.cold_start.name
            for name, folder in carry_from.items():
                shutil.copytree(folder, staging / name)
                entries[name] = {**entries.get(name, {}), "path": name}
            pop = {"items": [str(i) for i in popularity["items"]], "counts": [int(c) for c in popularity["counts"]]}
            (staging / POPULARITY_FILE).write_bytes(_json_bytes(pop, POPULARITY_FILE))
            checksums = file_checksums(staging)
            for name, folder in carry_from.items():
                _check_carried(Path(folder), name, checksums)
            full = {
                **manifest,
                "version": version,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "models": entries,
                "popularity": POPULARITY_FILE,
                CHECKSUMS_KEY: checksums,
            }
            (staging / MANIFEST_FILE).write_bytes(_json_bytes(full, MANIFEST_FILE))  # last: marks completeness
            _fsync_tree(staging)
            os.rename(staging, root / version)
            _fsync_path(root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _write_pointer(root, version)
        apply_retention(root, keep)
    return version
