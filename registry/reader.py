"""Reading a published version: every model checked (checksums, finite weights, a smoke recommendation)
and loaded with its id maps, cold-start baseline and top-N lists.

Imports only the standard library at import time; torch and the models load inside ``load_version``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.checksums import refuse_non_finite, verify_checksums
from registry.versions import (CHECKSUMS_KEY, COLD_START_DIR, COLD_START_FILES, IDS_FILE, METRICS_FILE, MODEL_FILES,
                               POPULARITY_FILE, TRAINED_PAIRS_FILE, ArtifactError, latest_version, read_json,
                               read_manifest)

if TYPE_CHECKING:
    from models.base import Recommender


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
    refuse_non_finite(model, f"model {name} in {folder.parent.name}")
    ids = read_json(folder / IDS_FILE, f"id map of {name}")
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
        metrics=read_json(folder / METRICS_FILE, f"metrics of {name}"),
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
    refuse_non_finite(baseline, what)
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
    popularity = read_json(folder / popularity_file, f"popularity of {version}")
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
