"""``get_dataset``: a MovieLens dataset (``interactions.movielens``) fetched, verified and cached.

A dataset lives in ``DATA_DIR/<name>/`` next to ``.verified.json`` (where it came from,
file sizes and sha256). ``get_dataset`` tries, in order: that cache if it still verifies;
the ``source`` the user points at (a folder or a ``.zip``); the GroupLens download
(``<GROUPLENS_URL>/<name>.zip``, checked against its ``.md5`` sidecar); and for ml-100k
only, the copy inside the ``recbole==1.2.1`` wheel on PyPI. Every new copy is assembled
in a temporary folder, verified (pinned checksums, published shape), then renamed into
place, so a half-finished fetch never looks like a dataset.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from tqdm import tqdm

from errors import DataError, UserError
from interactions import Interactions
from interactions.movielens import DatasetSpec, dataset_spec, read_dataset
from interactions.settings import dataset_settings

MARKER = ".verified.json"
RECBOLE = "recbole==1.2.1"
_RECBOLE_DIR = "recbole/dataset_example/ml-100k/"


# --- get, verify, cache --------------------------------------------------------------


def get_dataset(
    name: str, *, data_dir: str | Path | None = None, source: str | Path | None = None, progress: bool = True
) -> Interactions:
    """The dataset ``name`` from the verified cache, fetching and verifying it first if needed.

    ``source`` is a local folder or ``.zip`` holding the GroupLens files, used when the
    cache is missing or no longer verifies. Raises ``UserError`` for an unknown name or a
    missing ``source``, ``DataError`` when the data fails verification or cannot be had.
    """
    spec = dataset_spec(name)
    root = Path(data_dir) if data_dir is not None else dataset_settings().DATA_DIR
    root = root.expanduser()
    folder = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f".{name}.lock")):
            if _cache_verifies(spec, folder):
                return read_dataset(name, folder)
            return _install(spec, folder, source, progress)
    except OSError as exc:  # a read-only or full DATA_DIR, an unreadable --source
        raise UserError(f"{name}: {exc.strerror or exc}: {exc.filename or root}") from None


def dataset_origin(name: str, *, data_dir: str | Path | None = None) -> str | None:
    """Where the cached copy of ``name`` came from (``None`` when it is not cached)."""
    root = Path(data_dir) if data_dir is not None else dataset_settings().DATA_DIR
    marker = root.expanduser() / name / MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text())["origin"]


def _cache_verifies(spec: DatasetSpec, folder: Path) -> bool:
    """Every recorded file is present at its recorded size, and pinned checksums still hold."""
    try:
        recorded = json.loads((folder / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    for file_name, facts in recorded.items():
        path = folder / file_name
        if not path.is_file() or path.stat().st_size != facts["size"]:
            return False
    return all(_sha256(folder / f) == digest for f, digest in spec.sha256.items() if (folder / f).is_file())


class _Unavailable(Exception):
    """One way of getting the data did not work; the next one is tried."""


def _install(spec: DatasetSpec, folder: Path, source: str | Path | None, progress: bool) -> Interactions:
    tried: list[str] = []
    attempts = []
    if source is not None:
        attempts.append(lambda tmp: _from_source(spec, Path(source).expanduser(), tmp))
    else:
        if (folder / spec.ratings_file).is_file() and not (folder / MARKER).exists():  # files put there by hand
            attempts.append(lambda tmp: _from_source(spec, folder, tmp))
        attempts.append(lambda tmp: _from_grouplens(spec, tmp, progress))
        if spec.name == "ml-100k":
            attempts.append(lambda tmp: _from_recbole_wheel(tmp))
    for attempt in attempts:
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            origin = attempt(tmp)
            interactions = _verify(spec, tmp, origin)  # a source the user named fails loudly, here
            _write_marker(spec, tmp, origin)
            _replace_folder(tmp, folder)
            return interactions
        except (_Unavailable, DataError) as exc:
            if source is not None and isinstance(exc, DataError):
                raise
            tried.append(str(exc))
            if progress and attempt is not attempts[-1]:
                print(f"{spec.name}: {exc}; trying the next source", file=sys.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise DataError(
        f"could not get {spec.name}: tried {'; '.join(tried)}. Download {spec.name}.zip from GroupLens "
        f"and run: python -m trainer data {spec.name} --source PATH (the .zip or the folder with {spec.ratings_file})"
    )


def _verify(spec: DatasetSpec, folder: Path, origin: str) -> Interactions:
    """Pinned checksums, then the published shape; returns what was read."""
    for file_name, digest in spec.sha256.items():
        actual = _sha256(folder / file_name)
        if actual != digest:
            raise DataError(
                f"{origin}: {file_name} sha256 {actual[:12]}... is not the GroupLens file's {digest[:12]}..."
            )
    interactions = read_dataset(spec.name, folder)
    if spec.shape is not None:
        shape = (interactions.n_users, interactions.n_items, len(interactions))
        if shape != spec.shape:
            got, want = (f"{u:,} users, {i:,} items, {r:,} ratings" for u, i, r in (shape, spec.shape))
            raise DataError(f"{origin}: {spec.ratings_file} has {got}; {spec.name} has {want}")
    return interactions


def _write_marker(spec: DatasetSpec, folder: Path, origin: str) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir()) if p.is_file()}
    verified_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    marker = {"dataset": spec.name, "origin": origin, "verified_at": verified_at, "files": files}
    (folder / MARKER).write_text(json.dumps(marker, indent=2))


def _replace_folder(new: Path, folder: Path) -> None:
    """Rename ``new`` onto ``folder``; a stale copy is moved aside first (rename needs an absent target)."""
    if folder.exists():
        stale = folder.parent / f".{folder.name}-stale-{time.time_ns()}"
        folder.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    new.rename(folder)


def _wanted(spec: DatasetSpec, file_name: str) -> bool:
    # Only what the readers use plus the licence/README: ml-25m's zip also holds a tag genome larger than its ratings.
    return file_name in (spec.ratings_file, spec.titles_file) or file_name.upper().startswith("README")


# --- sources -------------------------------------------------------------------------


def _from_source(spec: DatasetSpec, source: Path, tmp: Path) -> str:
    if not source.exists():
        raise UserError(f"--source {source} does not exist")
    if source.is_dir():
        candidates = [source, source / spec.name, *sorted(p for p in source.iterdir() if p.is_dir())]
        found = next((d for d in candidates if (d / spec.ratings_file).is_file()), None)
        if found is None:
            raise DataError(f"{source}: no {spec.ratings_file} in this folder or the folders just below it")
        for path in found.iterdir():
            if path.is_file() and _wanted(spec, path.name):
                shutil.copyfile(path, tmp / path.name)
        return f"local folder {found}"
    if zipfile.is_zipfile(source):
        _extract(spec, source, tmp)
        return f"zip archive {source}"
    raise UserError(f"--source {source} is neither a folder nor a .zip archive")


def _extract(spec: DatasetSpec, archive: Path, tmp: Path) -> None:
    """Copy the wanted members out of the folder in ``archive`` that holds the ratings file.

    Members are written under their base name only, so no path in the archive can
    escape ``tmp``. (ml-10m's zip names its folder ``ml-10M100K``, hence the search.)
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and "__MACOSX" not in m.filename]
            ratings = [m for m in members if Path(m.filename).name == spec.ratings_file]
            if not ratings:
                raise DataError(f"{archive}: no {spec.ratings_file} inside; is this {spec.name}.zip?")
            folder = str(Path(ratings[0].filename).parent)
            for member in members:
                member_path = Path(member.filename)
                if str(member_path.parent) == folder and _wanted(spec, member_path.name):
                    with zf.open(member) as src, open(tmp / member_path.name, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({' '.join(str(exc).split())})") from None


def _from_grouplens(spec: DatasetSpec, tmp: Path, progress: bool) -> str:
    settings = dataset_settings()
    url = f"{settings.GROUPLENS_URL.rstrip('/')}/{spec.name}.zip"
    archive = tmp / f"{spec.name}.zip"
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=settings.DOWNLOAD_TIMEOUT_S) as response, open(archive, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=archive.name,
                       disable=not progress, file=sys.stderr)
            with bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _Unavailable(f"{url} ({_reason(exc)})") from None
    published = _published_md5(url, settings.DOWNLOAD_TIMEOUT_S)
    if published is not None and published != md5.hexdigest():
        raise _Unavailable(f"{url} (md5 {md5.hexdigest()} differs from the published {published}: damaged download)")
    _extract(spec, archive, tmp)
    archive.unlink()
    check = "md5 matches GroupLens' .md5" if published else "no .md5 published; content checks only"
    return f"GroupLens download {url} ({check})"


def _published_md5(url: str, timeout: float) -> str | None:
    """The digest in GroupLens' ``<name>.zip.md5`` sidecar, or None when there is none."""
    try:
        with urllib.request.urlopen(url + ".md5", timeout=timeout) as response:
            text = response.read(4096).decode("ascii", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    return found.group(0).lower() if found else None


def _from_recbole_wheel(tmp: Path) -> str:
    """ml-100k from the RecBole wheel on PyPI: its ``ml-100k.inter`` rows are GroupLens' ``u.data``.

    Only ``ml-100k.inter`` and ``ml-100k.item`` are read from the wheel (never installed
    or imported). The .inter body, written back tab-separated without its typed header,
    reproduces ``u.data`` byte for byte, in the same order: ``_verify`` checks its sha256.
    The .item file splits "Toy Story (1995)" into title and year; ``u.item`` is rebuilt as
    "id|title (year)", the two fields the reader uses.
    """
    with tempfile.TemporaryDirectory() as wheel_dir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", "--dest", wheel_dir, RECBOLE]
        try:
            # pip retries on its own; the cap only stops a hung network from hanging us.
            timeout = max(60.0, 6 * dataset_settings().DOWNLOAD_TIMEOUT_S)
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _Unavailable(f"{RECBOLE} wheel from PyPI ({_reason(exc)})") from None
        wheels = sorted(Path(wheel_dir).glob("recbole-1.2.1-*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["pip download failed"])[-1]
            raise _Unavailable(f"{RECBOLE} wheel from PyPI ({last.strip()})")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                inter = zf.read(_RECBOLE_DIR + "ml-100k.inter")
                item = zf.read(_RECBOLE_DIR + "ml-100k.item")
        except (zipfile.BadZipFile, KeyError) as exc:
            raise _Unavailable(f"{RECBOLE} wheel ({_reason(exc)})") from None

    # Header "user_id:token\titem_id:token\trating:float\ttimestamp:float"; values are integers.
    rows = pd.read_csv(io.BytesIO(inter), sep="\t", dtype=np.int64, engine="c")
    rows.to_csv(tmp / "u.data", sep="\t", header=False, index=False)
    items = pd.read_csv(
        io.BytesIO(item), sep="\t", dtype=str, quoting=csv.QUOTE_NONE, engine="c", keep_default_na=False
    )
    title, year = items.iloc[:, 1].str.strip(), items.iloc[:, 2].str.strip()
    dated = year.str.fullmatch(r"\d{4}")
    full_title = title.where(~dated, title + " (" + year + ")").where(title != "unkonwn", "unknown")  # RecBole's typo
    lines = items.iloc[:, 0] + "|" + full_title + "\n"
    (tmp / "u.item").write_bytes("".join(lines).encode("latin-1", errors="replace"))
    return f"{RECBOLE} wheel from PyPI (ml-100k.inter rows, byte-identical to GroupLens u.data)"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return " ".join(str(reason).split())[:200] or type(exc).__name__

