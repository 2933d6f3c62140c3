"""A registry's names and pointers: version names, ``LATEST``, the listing and a version's manifest.

The file and folder names a version is made of are declared here once (the package
docstring draws the layout); ``reader`` and ``writer`` use them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from errors import UserError

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


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{what} is missing: {path}") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{what} is unreadable: {path}: {exc}") from exc


def read_manifest(root: str | Path, version: str) -> dict[str, Any]:
    if not is_version_name(version):
        raise ArtifactError(f"{version!r} is not a version name (expected YYYYMMDDTHHMMSSZ-xxxxxx)")
    manifest = read_json(Path(root) / version / MANIFEST_FILE, f"manifest of version {version}")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise ArtifactError(f"manifest of version {version} has no 'models' mapping")
    if manifest.get("version") != version:
        raise ArtifactError(f"manifest of version {version} names version {manifest.get('version')!r}")
    return manifest


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


def new_version_name(root: str | Path | None = None) -> str:
    """UTC timestamp plus 6 random hex digits; later than every version already in ``root``."""
    newest = max(list_versions(root), default="") if root is not None else ""
    while True:
        name = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        if name > newest:
            return name
        time.sleep(0.05)  # same second as the newest version: wait for the clock so order stays by time
