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

The trainer publishes (``registry.writer``) and the service reads (``registry.reader``); both
import this package (its names: ``registry.versions``, its checks: ``registry.checksums``) and
never each other. It imports only the standard library and ``filelock``
at import time; torch and the models load inside ``load_version``. ``registry.best`` is the rule
for which model a version serves by default.
"""

from registry.checksums import file_checksums, file_sha256, non_finite_weights, verify_checksums  # noqa: F401
from registry.reader import LoadedModel, LoadedVersion, load_version, read_trained_pairs  # noqa: F401
from registry.versions import (  # noqa: F401
    CHECKSUMS_KEY, COLD_START_DIR, COLD_START_FILES, CURVE_FILE, IDS_FILE, LATEST_FILE, LOCK_FILE, MANIFEST_FILE,
    METRICS_FILE, MODEL_FILES, POPULARITY_FILE, TMP_PREFIX, TRAINED_PAIRS_FILE, VERSION_PATTERN, ArtifactError,
    is_version_name, latest_version, list_versions, new_version_name, read_manifest, version_stamp,
)
from registry.writer import (  # noqa: F401
    StagedModel, apply_retention, publish, registry_lock, remove_stale_temporaries, trained_pairs_bytes,
)
