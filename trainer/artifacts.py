"""The artifact registry: versioned, immutable model folders plus an atomic ``LATEST`` pointer.

Layout (the trainer writes, the service reads)::

    ARTIFACTS_DIR/
      LATEST                  the current version's name, replaced atomically
      .lock                   held by whoever trains or publishes (filelock)
      <version>/              immutable; version = UTC "YYYYMMDDTHHMMSSZ-<6 hex>", sortable by time
        manifest.json         written last inside the staging folder; "files" holds each other file's sha256 and size
        popularity.json       {"items": [...], "counts": [...]}, most popular first
        <model>/              weights.safetensors, model.json, ids.json, metrics.json, learning_curve.png,
                              trained_pairs.npz (the (user, item) pairs it trained on; the gate reads it),
                              top_items.npy, top_scores.npy (rankers: each user's top-N, trainer.top_lists)
          cold-start/         rating models: the bias baseline on the same training data (weights.safetensors, model.json)
      .tmp-<uuid>             a version (or LATEST) being written; readers ignore it

Why readers never see half a version: a version is written into ``.tmp-<uuid>/``,
every file and folder is fsynced, and only then is the folder renamed to its
version name (``rename`` of a directory is atomic on POSIX). ``LATEST`` is
replaced the same way (write a temporary file, fsync, ``os.replace``, fsync the
folder). Old versions are first renamed to ``.tmp-<uuid>`` and then deleted, so a
version disappears at once, never file by file. Publishing holds ``.lock``; any
``.tmp-*`` found while holding it belongs to a writer that died (killed mid-write)
and is removed.

Why a reader trusts what it loads: the manifest lists every other file of the version with
its sha256 and size, and ``load_version`` checks them (sizes first, then hashes, each file
hashed once, in chunks) before it loads a model, then refuses non-finite weights. A manifest
without checksums (published before they were written) loads with a logged warning:
refusing it would turn upgrading the service into an outage. The checksums catch damage
(a truncated copy, a flipped bit), not a writer who can also rewrite the manifest.

This module is read by the service: it imports only the standard library and
``filelock`` at import time; torch and the models load inside ``load_version``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from filelock import FileLock

from trainer.errors import UserError

if TYPE_CHECKING:
    from models.base import Recommender

log = logging.getLogger("trainer.artifacts")

LATEST_FILE = "LATEST"
LOCK_FILE = ".lock"
MANIFEST_FILE = "manifest.json"
CHECKSUMS_KEY = "files"  # manifest: {relative path: {"sha256": hex, "bytes": size}} of every other file
POPULARITY_FILE = "popularity.json"
IDS_FILE = "ids.json"
METRICS_FILE = "metrics.json"
CURVE_FILE = "learning_curve.png"
TRAINED_PAIRS_FILE = "trained_pairs.npz"  # CSR pattern (indptr, indices, shape) [ids.json users x items]: the gate's
TMP_PREFIX = ".tmp-"
MODEL_FILES = ("weights.safetensors", "model.json", IDS_FILE, METRICS_FILE)  # what a model folder must hold
COLD_START_DIR = "cold-start"  # a rating model's answer for a user it has no usable history of
COLD_START_FILES = ("weights.safetensors", "model.json")
VERSION_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


class ArtifactError(UserError):
    """The registry (or one version in it) is missing, incomplete or inconsistent."""


# ---- reading ---------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """One published model, ready to serve, with its id maps (external ids are strings)."""

    name: str
    model: Recommender
    user_ids: list[str]
    item_ids: list[str]
    user_index: dict[str, int]
    item_index: dict[str, int]
    metrics: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)  # the manifest's entry for this model
    cold_start: Recommender | None = None  # the bias baseline beside a rating model; None in versions before it
    trained_pairs_file: Path | None = None  # checksummed trained_pairs.npz; None in versions published before it
    # each user's top-N (trainer.top_lists), memory-mapped: one copy in the page cache for every process
    top_items: Any = None  # int32 [users, N]; None when the manifest names no lists for this model
    top_scores: Any = None  # float32 [users, N]


@dataclass
class LoadedVersion:
    version: str
    manifest: dict[str, Any]
    models: dict[str, LoadedModel]
    popular_items: list[str]
    popular_counts: list[int]
    path: Path


def is_version_name(name: str) -> bool:
    return bool(VERSION_PATTERN.match(name))


def latest_version(root: str | Path) -> str | None:
    """The version ``LATEST`` points to, or None when nothing was ever published."""
    path = Path(root) / LATEST_FILE
    try:
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if not is_version_name(name):
        raise ArtifactError(f"{path} holds {name[:60]!r}, which is not a version name")
    return name


def list_versions(root: str | Path) -> list[str]:
    """Published versions, oldest first (names sort by creation time)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if is_version_name(p.name) and (p / MANIFEST_FILE).is_file())


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{what} is missing: {path}") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{what} is unreadable: {path}: {exc}") from exc


def read_manifest(root: str | Path, version: str) -> dict[str, Any]:
    if not is_version_name(version):
        raise ArtifactError(f"{version!r} is not a version name (expected YYYYMMDDTHHMMSSZ-xxxxxx)")
    manifest = _read_json(Path(root) / version / MANIFEST_FILE, f"manifest of version {version}")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise ArtifactError(f"manifest of version {version} has no 'models' mapping")
    if manifest.get("version") != version:
        raise ArtifactError(f"manifest of version {version} names version {manifest.get('version')!r}")
    return manifest


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()  # 256 KiB reads; the GIL is released while hashing


def file_checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under a version's folder but its manifest, by path relative to it."""
    checksums = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative != MANIFEST_FILE:
            checksums[relative] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    return checksums


def verify_checksums(folder: Path, manifest: dict[str, Any], required: Iterable[str]) -> None:
    """Check every file the manifest lists against its size, then its sha256; ``required`` (the
    files a load reads) must all be listed. A manifest without checksums passes with a warning."""
    version = folder.name
    listed = manifest.get(CHECKSUMS_KEY)
    if listed is None:
        log.warning("version %s has no checksums in its manifest (published before they were written): "
                    "its files are loaded unverified", version)
        return
    entries = listed.items() if isinstance(listed, dict) else ()
    if not entries or not all(isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
                              for _, e in entries):
        raise ArtifactError(f"manifest of version {version}: {CHECKSUMS_KEY!r} must map each file to its sha256 and bytes")
    unlisted = sorted(set(required) - set(listed))
    if unlisted:
        raise ArtifactError(f"manifest of version {version} has no checksum for {', '.join(unlisted)}")
    for relative, entry in entries:  # sizes first: a truncated or missing file is named without reading any
        path = folder / relative
        if ".." in Path(relative).parts or Path(relative).is_absolute():
            raise ArtifactError(f"version {version}: its manifest lists {relative!r}, outside the version")
        if not path.is_file():
            raise ArtifactError(f"version {version}: {relative} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(f"version {version}: {relative} has {size:,} bytes, its manifest says {entry['bytes']:,}")
    for relative, entry in entries:
        if file_sha256(folder / relative) != entry["sha256"]:
            raise ArtifactError(f"version {version}: {relative} does not match its sha256 in the manifest (corrupted)")


def non_finite_weights(model: Recommender) -> dict[str, int]:
    """Weight name -> how many of its values are NaN or infinite, for the weights that have any."""
    import torch

    counts = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            # NaN and inf reach the min or max: one pass and no mask (a mask of EASE's B is 400 MB at 20,000 items)
            if bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all()):
                continue
            counts[name] = sum(int((~torch.isfinite(chunk)).sum()) for chunk in tensor.reshape(-1).split(1 << 24))
    return counts


def _refuse_non_finite(model: Recommender, what: str) -> None:
    bad = non_finite_weights(model)
    if bad:
        listed = ", ".join(f"{name}: {count:,} values" for name, count in bad.items())
        raise ArtifactError(f"{what} has non-finite weights ({listed})")


def version_stamp(root: str | Path, version: str) -> tuple:
    """Path, size, inode and times of each file of a version: it changes whenever a file is written,
    replaced, added or removed (the service retries a refused version only then)."""
    stamp = []
    for dirpath, _, filenames in os.walk(Path(root) / version):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            try:
                st = os.stat(path)
            except OSError:  # removed while we walked: the next stamp differs anyway
                continue
            stamp.append((path, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(sorted(stamp))


def _load_model(folder: Path, name: str, info: dict, map_location: str) -> LoadedModel:
    import numpy as np
    import scipy.sparse as sp

    import models

    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise ArtifactError(f"model {name} in {folder.parent.name} is incomplete: missing {', '.join(missing)}")
    try:
        model = models.load(folder, map_location=map_location)
    except Exception as exc:  # a corrupt file surfaces as many different errors; all mean "cannot serve this"
        raise ArtifactError(f"model {name} in {folder.parent.name} cannot be loaded: {exc}") from exc
    _refuse_non_finite(model, f"model {name} in {folder.parent.name}")
    ids = _read_json(folder / IDS_FILE, f"id map of {name}")
    users, items = ids.get("users"), ids.get("items")
    if not isinstance(users, list) or not isinstance(items, list):
        raise ArtifactError(f"{folder / IDS_FILE} needs 'users' and 'items' lists")
    if len(users) != model.n_users or len(items) != model.n_items:
        raise ArtifactError(
            f"model {name}: ids.json has {len(users)} users x {len(items)} items, "
            f"the weights have {model.n_users} x {model.n_items}"
        )
    users, items = [str(u) for u in users], [str(i) for i in items]
    cold_start = _load_cold_start(folder, name, info, model, map_location)
    # Smoke test: an empty history of user 0 must give finite scores.
    empty = sp.csr_matrix((1, model.n_items), dtype=np.float32)
    try:
        _, scores = model.recommend(empty, k=min(10, model.n_items), users=np.zeros(1, dtype=np.int64), timestamps=empty)
    except Exception as exc:
        raise ArtifactError(f"model {name} in {folder.parent.name} fails a smoke recommendation: {exc}") from exc
    if not np.isfinite(scores).all():
        raise ArtifactError(f"model {name} in {folder.parent.name} gives non-finite scores")
    return LoadedModel(
        name=name,
        model=model,
        user_ids=users,
        item_ids=items,
        user_index={u: i for i, u in enumerate(users)},
        item_index={it: i for i, it in enumerate(items)},
        metrics=_read_json(folder / METRICS_FILE, f"metrics of {name}"),
        info=info,
        cold_start=cold_start,
    )


def _load_cold_start(folder: Path, name: str, info: dict, model: Recommender, map_location: str) -> Recommender | None:
    """The cold-start baseline the manifest names for model ``name``, checked against the model's items."""
    if not info.get("cold_start"):
        return None
    import models

    what = f"cold-start baseline of {name} in {folder.parent.name}"
    try:
        baseline = models.load(folder / COLD_START_DIR, map_location=map_location)
    except Exception as exc:  # as for the model: any failure to read it means "cannot serve this"
        raise ArtifactError(f"{what} cannot be loaded: {exc}") from exc
    _refuse_non_finite(baseline, what)
    if baseline.task != "rating" or baseline.n_items != model.n_items:
        raise ArtifactError(f"{what}: a {baseline.task} model of {baseline.n_items} items for a model of {model.n_items}")
    return baseline


def load_version(root: str | Path, version: str | None = None, map_location: str = "cpu") -> LoadedVersion:
    """Load and check every model of a version (``LATEST`` when ``version`` is None)."""
    root = Path(root)
    version = version or latest_version(root)
    if version is None:
        raise ArtifactError(f"no version published in {root}")
    manifest = read_manifest(root, version)
    folder = root / version
    subfolders = {}
    for name, info in manifest["models"].items():
        sub = info.get("path", name) if isinstance(info, dict) else name
        if not isinstance(sub, str) or "/" in sub or sub.startswith("."):
            raise ArtifactError(f"manifest of {version}: model path {sub!r} must be a plain folder name")
        subfolders[name] = sub
    popularity_file = manifest.get("popularity", POPULARITY_FILE)
    read = [popularity_file, *(f"{sub}/{f}" for sub in subfolders.values() for f in MODEL_FILES)]
    read += [f"{subfolders[name]}/{COLD_START_DIR}/{f}" for name, info in manifest["models"].items()
             if isinstance(info, dict) and info.get("cold_start") for f in COLD_START_FILES]
    read += [f"{subfolders[name]}/{_top_list_file(info, key, version)}" for name, info in manifest["models"].items()
             if isinstance(info, dict) and info.get("top_lists") for key in ("items", "scores")]
    verify_checksums(folder, manifest, read)
    loaded = {}
    for name, sub in subfolders.items():
        info = manifest["models"][name]
        loaded[name] = _load_model(folder / sub, name, info if isinstance(info, dict) else {}, map_location)
        pairs = f"{sub}/{TRAINED_PAIRS_FILE}"
        if (folder / pairs).is_file() and (manifest.get(CHECKSUMS_KEY) is None or pairs in manifest[CHECKSUMS_KEY]):
            loaded[name].trained_pairs_file = folder / pairs  # read on demand: the service never needs it
        if isinstance(info, dict) and info.get("top_lists"):
            loaded[name].top_items, loaded[name].top_scores = _load_top_lists(folder / sub, loaded[name], version)
    popularity = _read_json(folder / popularity_file, f"popularity of {version}")
    items, counts = popularity.get("items"), popularity.get("counts")
    if not isinstance(items, list) or not isinstance(counts, list) or len(items) != len(counts):
        raise ArtifactError(f"popularity of {version} needs 'items' and 'counts' lists of the same length")
    return LoadedVersion(
        version=version,
        manifest=manifest,
        models=loaded,
        popular_items=[str(i) for i in items],
        popular_counts=[int(c) for c in counts],
        path=folder,
    )


def _top_list_file(info: dict, key: str, version: str) -> str:
    name = info["top_lists"].get(key) if isinstance(info["top_lists"], dict) else None
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        raise ArtifactError(f"manifest of {version}: top_lists {key} {name!r} must be a file name in the model's folder")
    return name


def _load_top_lists(folder: Path, loaded: LoadedModel, version: str) -> tuple[Any, Any]:
    """The model's top-N lists, memory-mapped read-only, checked against its ids and for finite scores."""
    import numpy as np

    what = f"top-N lists of {loaded.name} in {version}"
    try:
        items = np.load(folder / _top_list_file(loaded.info, "items", version), mmap_mode="r", allow_pickle=False)
        scores = np.load(folder / _top_list_file(loaded.info, "scores", version), mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # a damaged .npy header surfaces as value or OS errors
        raise ArtifactError(f"{what} are unreadable: {exc}") from exc
    if (items.dtype != np.int32 or scores.dtype != np.float32 or items.ndim != 2 or items.shape != scores.shape
            or items.shape[0] != len(loaded.user_ids)):
        raise ArtifactError(f"{what}: {items.dtype} {items.shape} and {scores.dtype} {scores.shape} "
                            f"for {len(loaded.user_ids)} users")
    if items.size and (int(items.min()) < -1 or int(items.max()) >= len(loaded.item_ids)
                       or not np.isfinite(scores[items >= 0]).all()):
        raise ArtifactError(f"{what} hold item indices outside the model's items or non-finite scores")
    return items, scores


def read_trained_pairs(loaded: LoadedModel) -> Any:
    """The (user, item) pairs a published model trained on, as a boolean CSR [its users x its items]
    indexed like its ``ids.json``; None for a version published before they were written."""
    import scipy.sparse as sp

    if loaded.trained_pairs_file is None:
        return None
    import numpy as np

    try:
        with np.load(loaded.trained_pairs_file, allow_pickle=False) as npz:
            indptr, indices, shape = npz["indptr"], npz["indices"], tuple(int(n) for n in npz["shape"])
        pairs = sp.csr_matrix((np.ones(len(indices), dtype=bool), indices, indptr), shape=shape)
    except Exception as exc:  # a damaged file surfaces as zip, value or key errors
        raise ArtifactError(f"{loaded.trained_pairs_file} is unreadable: {exc}") from exc
    if pairs.shape != (len(loaded.user_ids), len(loaded.item_ids)):
        raise ArtifactError(f"{loaded.trained_pairs_file} is {pairs.shape[0]} x {pairs.shape[1]}, "
                            f"ids.json {len(loaded.user_ids)} users x {len(loaded.item_ids)} items")
    return pairs


def trained_pairs_bytes(matrix: Any) -> bytes:
    """``TRAINED_PAIRS_FILE``'s content: the nonzero pattern of a training matrix, 4 bytes a pair (int32
    column indices; zlib would halve that at ~1 s per million pairs)."""
    import io

    import numpy as np
    import scipy.sparse as sp

    pattern = sp.csr_matrix(matrix, copy=True)
    pattern.eliminate_zeros()  # a stored zero is no interaction
    pattern.sort_indices()
    buffer = io.BytesIO()
    np.savez(buffer, indptr=pattern.indptr, indices=pattern.indices, shape=np.asarray(pattern.shape, dtype=np.int64))
    return buffer.getvalue()


# ---- writing ---------------------------------------------------------------------------


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


def new_version_name(root: str | Path | None = None) -> str:
    """UTC timestamp plus 6 random hex digits; later than every version already in ``root``."""
    newest = max(list_versions(root), default="") if root is not None else ""
    while True:
        name = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        if name > newest:
            return name
        time.sleep(0.05)  # same second as the newest version: wait for the clock so order stays by time


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
    listed = _read_json(source.parent / MANIFEST_FILE, f"manifest of version {source.parent.name}").get(CHECKSUMS_KEY) or {}
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
    _refuse_non_finite(baseline, f"cold-start baseline of {name}")
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
                _refuse_non_finite(model, f"model {name}")
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

