"""What a reader checks before it trusts a version: each file's sha256 and size, and finite weights."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from registry.versions import CHECKSUMS_KEY, MANIFEST_FILE, ArtifactError

if TYPE_CHECKING:
    from models.base import Recommender

log = logging.getLogger("registry")


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
            # NaN and inf reach the min or max: one pass and no mask (bench/RESULTS.md, "Verified artifacts and fallback")
            if bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all()):
                continue
            counts[name] = sum(int((~torch.isfinite(chunk)).sum()) for chunk in tensor.reshape(-1).split(1 << 24))
    return counts


def refuse_non_finite(model: Recommender, what: str) -> None:
    bad = non_finite_weights(model)
    if bad:
        listed = ", ".join(f"{name}: {count:,} values" for name, count in bad.items())
        raise ArtifactError(f"{what} has non-finite weights ({listed})")
