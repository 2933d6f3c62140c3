"""Real data, real models and real artifact versions for the service tests.

A slice of ml-100k (users 1..TRAIN_USERS, items 1..MAX_ITEM) trains EASE (closed form),
AutoRec-U and AutoRec-I (a few epochs) with ``trainer.fit``; ``publish_version`` writes
them through the trainer's own ``registry.publish``. Users TRAIN_USERS+1.. are "late":
the models never saw them, so they exercise fold-in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from _test_servers import PG_URL, REDIS_URL, free_port, unavailable  # noqa: F401 (re-exported to the tests)
from interactions import Interactions
import registry

def new_user() -> str:
    return f"late-{uuid.uuid4().hex[:10]}"


TRAIN_USERS = 300
MAX_ITEM = 600
POSITIVE = 4.0  # rankers learn from ratings >= 4 (protocols.md)
API_KEY = "test-key-4f9c2e"


@dataclass
class Corpus:
    """The training slice: rating matrix, id maps and the raw rows the database is seeded with."""

    X: sp.csr_matrix  # users x items ratings of the training users
    user_ids: list[str]
    item_ids: list[str]
    titles: dict[str, str]
    rows: dict[str, list]  # user_id, item_id, rating, timestamp of every training interaction
    late_rows: dict[str, list]  # the same for users the models never saw


def make_corpus(inter: Interactions) -> Corpus:
    user_ids = np.asarray(inter.user_ids).astype(str)
    item_ids = np.asarray(inter.item_ids).astype(str)
    u_ext, i_ext = user_ids[inter.users].astype(int), item_ids[inter.items].astype(int)
    in_items = i_ext <= MAX_ITEM
    train = in_items & (u_ext <= TRAIN_USERS)
    late = in_items & (u_ext > TRAIN_USERS) & (u_ext <= TRAIN_USERS + 20)

    def rows(mask: np.ndarray) -> dict[str, list]:
        return {
            "user_id": user_ids[inter.users[mask]].tolist(),
            "item_id": item_ids[inter.items[mask]].tolist(),
            "rating": inter.ratings[mask].astype(float).tolist(),
            "timestamp": inter.timestamps[mask].tolist(),
        }

    train_users = np.unique(inter.users[train])
    train_items = np.unique(inter.items[train])
    u_pos = np.searchsorted(train_users, inter.users[train])
    i_pos = np.searchsorted(train_items, inter.items[train])
    X = sp.csr_matrix(
        (inter.ratings[train].astype(np.float32), (u_pos, i_pos)), shape=(len(train_users), len(train_items))
    )
    titles = {str(k): v for k, v in (inter.item_titles or {}).items()}
    return Corpus(X, user_ids[train_users].tolist(), item_ids[train_items].tolist(), titles, rows(train), rows(late))


def train_models(corpus: Corpus) -> dict:
    """{name: ``FitResult``} of EASE, AutoRec-U and AutoRec-I on the corpus."""
    import torch

    from trainer.training import fit

    positives = sp.csr_matrix(corpus.X >= POSITIVE, dtype=np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two fighting over a shared machine
    try:
        return {
            # float64 on purpose ("auto" would take float32 here): the served copy's cast is tested
            "ease": fit("ease", positives, progress=False, lam=50.0, dtype="float64"),
            "autorec-u": fit("autorec-u", corpus.X, progress=False, epochs=20, hidden=40, lr=1e-2, seed=0, holdout=0),
            "autorec-i": fit("autorec-i", corpus.X, progress=False, epochs=20, hidden=40, lr=1e-2, seed=0, holdout=0),
        }
    finally:
        torch.set_num_threads(threads)


def popularity(corpus: Corpus) -> dict[str, list]:
    counts = np.asarray(corpus.X.getnnz(axis=0)).ravel()
    order = np.lexsort((np.arange(len(counts)), -counts))
    return {"items": [corpus.item_ids[i] for i in order], "counts": counts[order].tolist()}


def bias_baseline(X: sp.csr_matrix, model):
    """The cold-start baseline the trainer publishes beside a rating model (``trainer.runs``)."""
    from models.base import TrainData
    from models.baselines import fit_baseline

    return fit_baseline("bias", TrainData(X, rating_range=model.rating_range))


def positive_timestamps(corpus: Corpus) -> sp.csr_matrix:
    """When each of the training users' positives was, on ``corpus.X >= POSITIVE``'s pattern (a sequential model reads it)."""
    rows = {u: n for n, u in enumerate(corpus.user_ids)}
    cols = {i: n for n, i in enumerate(corpus.item_ids)}
    r = np.array([rows[u] for u in corpus.rows["user_id"]])
    c = np.array([cols[i] for i in corpus.rows["item_id"]])
    keep = np.asarray(corpus.rows["rating"]) >= POSITIVE
    return sp.csr_matrix((np.asarray(corpus.rows["timestamp"], dtype=np.float64)[keep], (r[keep], c[keep])), shape=corpus.X.shape)


def top_lists(models: dict, corpus: Corpus) -> dict:
    """{ranker: its ``trainer.top_lists.TopLists``}, from the training users' histories, as the trainer publishes them."""
    from trainer.top_lists import compute_top_lists

    positives = sp.csr_matrix(corpus.X >= POSITIVE, dtype=np.float32)
    seen = sp.csr_matrix(corpus.X != 0, dtype=np.float32)
    timestamps = positive_timestamps(corpus)
    return {name: compute_top_lists(model, positives, seen, timestamps=timestamps)
            for name, model in models.items() if model.task == "ranking"}


def publish_version(root: Path, models: dict, corpus: Corpus, *, cold_start: bool = True, lists: bool = True,
                    extra: dict | None = None) -> str:
    """Publish ``models`` as a new version with the trainer's publisher; returns its name. ``models``: {name:
    a ``FitResult``, whose log gives the recorded curve and times, or a bare model (none recorded)}. ``cold_start``:
    each rating model with its bias baseline, as the trainer publishes it (False: a version from before).
    ``lists``: each ranker's top-N of every user (``trainer.top_lists``), as the trainer publishes them.
    ``extra``: more manifest keys (e.g. the trainer's ``best`` record)."""
    import time

    from trainer.training import FitResult

    logs = {name: entry.log if isinstance(entry, FitResult) else {} for name, entry in models.items()}
    models = {name: entry.model if isinstance(entry, FitResult) else entry for name, entry in models.items()}
    stored = top_lists(models, corpus) if lists else {}
    staged = {
        name: registry.StagedModel(
            model=model,
            user_ids=corpus.user_ids,
            item_ids=corpus.item_ids,
            metrics={"train": {"fit_seconds": logs[name].get("fit_seconds", 0.0)},
                     "curve": logs[name].get("curve", [])},
            cold_start=bias_baseline(corpus.X, model) if cold_start and model.task == "rating" else None,
            files=stored[name].files() if name in stored else {},
        )
        for name, model in models.items()
    }
    manifest = {
        "source": {"dataset": "ml-100k slice", "n_users": len(corpus.user_ids), "n_items": len(corpus.item_ids),
                   "n_interactions": int(corpus.X.nnz)},
        "positive_threshold": POSITIVE,
        "models": {
            name: {"task": model.task, "metrics": {}, "epochs": logs[name].get("epochs", 0),
                   "fit_seconds": logs[name].get("fit_seconds", 0.0),
                   **({"top_lists": stored[name].info(time.time(), False)} if name in stored else {})}
            for name, model in models.items()
        },
        **(extra or {}),
    }
    return registry.publish(root, staged, manifest, popularity=popularity(corpus), keep=10)


def copy_registry(source: Path, target: Path) -> str:
    """A private registry holding the version ``source``'s LATEST names (tests that swap or break versions)."""
    version = registry.latest_version(source)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / version, target / version)
    (target / "LATEST").write_text(version + "\n")
    return version


DAMAGES = ("weights", "ids", "missing-file", "truncated", "bit-flipped", "huge-rows")


def plant_broken_version(root: Path, damage: str) -> str:
    """Copy the served version under a new name (its manifest and checksums with it), damage it,
    and point LATEST at it."""
    good = registry.latest_version(root)
    name = registry.new_version_name(root)
    folder = root / name
    shutil.copytree(root / good, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = name
    (folder / "manifest.json").write_text(json.dumps(manifest))
    weights = folder / "ease" / "weights.safetensors"
    if damage == "weights":
        weights.write_bytes(b"\x00not a safetensors file")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy
    elif damage == "bit-flipped":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x04  # one bit of one value of B: still a valid file of finite weights
        weights.write_bytes(bytes(data))
    elif damage == "huge-rows":
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        state["B"][:3] = 3.4e38  # finite: only the checksum tells this B from the published one
        save_file(state, str(weights))
    elif damage == "ids":
        ids = json.loads((folder / "ease" / "ids.json").read_text())
        ids["items"] = ids["items"][:-3]  # shapes no longer match the weights
        (folder / "ease" / "ids.json").write_text(json.dumps(ids))
    elif damage == "missing-file":
        (folder / "autorec-u" / "metrics.json").unlink()
    else:
        raise ValueError(damage)
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / "LATEST")
    return name


_RECOMMENDATION_ID = re.compile(rb'^\{"recommendation_id":"[0-9a-f]{32}",')


def listed(response) -> bytes:
    """A recommendation answer's body without its ``recommendation_id`` (new on every answer, spliced in first):
    the list as it was computed and cached."""
    body, found = _RECOMMENDATION_ID.subn(b"{", response.content, count=1)
    assert found == 1, response.content[:120]
    return body


def error_body(response) -> dict:
    """The error object of a response, asserting the one error shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"], body
    return body["error"]


class RedisGate:
    """A TCP relay to a Redis server that a test can shut (the server vanishes) and reopen.

    Used when no ``redis-server`` binary is at hand to start and kill: clients of the
    relay see exactly what they see when Redis stops (connections reset, port refused).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._listener is not None:
                try:
                    self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._connections += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, target):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
