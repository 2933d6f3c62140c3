"""The artifact registry: publish/read round trip, atomicity under SIGKILL, retention, checksums, validation."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.autorec import AutoRecU, AutoRecUConfig
import registry
from registry import ArtifactError, StagedModel, writer

REPO = Path(__file__).resolve().parents[2]


def tiny_model(seed: int = 0, n_users: int = 6, n_items: int = 5) -> AutoRecU:
    torch.manual_seed(seed)
    # never fitted, so no bias model to centre on: its weights are all it is (a flipped bit must show)
    return AutoRecU(AutoRecUConfig(hidden=4, center="none"), n_items=n_items, n_users=n_users).eval()


def publish_tiny(root: Path, seed: int = 0, keep: int = 5, metrics: dict | None = None) -> str:
    model = tiny_model(seed)
    staged = {
        "autorec-u": StagedModel(
            model=model,
            user_ids=[f"u{i}" for i in range(model.n_users)],
            item_ids=[100 + i for i in range(model.n_items)],  # ints on the way in, strings on disk
            metrics=metrics or {"test": {"rmse": 1.0 + seed}, "seed": seed},
            files={"learning_curve.png": b"\x89PNG fake"},
        )
    }
    manifest = {"code_version": "test", "source": {"kind": "test"}, "models": {"autorec-u": {"epochs": 1}}}
    popularity = {"items": [104, 100], "counts": np.array([7, 3])}
    return registry.publish(root, staged, manifest, popularity=popularity, keep=keep)


def test_round_trip_restores_model_ids_and_manifest(tmp_path):
    assert registry.latest_version(tmp_path) is None
    assert registry.list_versions(tmp_path) == []
    version = publish_tiny(tmp_path)

    assert registry.is_version_name(version)
    assert registry.latest_version(tmp_path) == version
    assert registry.list_versions(tmp_path) == [version]
    loaded = registry.load_version(tmp_path)
    assert loaded.version == version
    assert loaded.manifest["version"] == version and loaded.manifest["code_version"] == "test"
    assert loaded.manifest["models"]["autorec-u"] == {"epochs": 1, "task": "rating", "path": "autorec-u"}
    assert loaded.popular_items == ["104", "100"] and loaded.popular_counts == [7, 3]

    entry = loaded.models["autorec-u"]
    assert entry.user_ids == [f"u{i}" for i in range(6)]
    assert entry.item_ids == [str(100 + i) for i in range(5)]
    assert entry.item_index["102"] == 2 and entry.user_index["u5"] == 5
    assert entry.metrics["test"] == {"rmse": 1.0}
    rows = sp.csr_matrix(np.array([[5, 0, 3, 0, 1], [0, 0, 0, 0, 0]], dtype=np.float32))
    torch.testing.assert_close(entry.model.scores(rows), tiny_model(0).scores(rows))
    assert (tmp_path / version / "autorec-u" / "learning_curve.png").read_bytes() == b"\x89PNG fake"
    assert not list(tmp_path.glob(".tmp-*"))


def test_second_publish_moves_latest_and_sorts_after(tmp_path):
    first = publish_tiny(tmp_path, seed=0)
    second = publish_tiny(tmp_path, seed=1)
    assert second > first
    assert registry.latest_version(tmp_path) == second
    assert registry.list_versions(tmp_path) == [first, second]
    assert registry.load_version(tmp_path).models["autorec-u"].metrics["seed"] == 1
    assert registry.load_version(tmp_path, first).models["autorec-u"].metrics["seed"] == 0


def test_retention_keeps_last_n_and_never_the_latest(tmp_path):
    versions = [publish_tiny(tmp_path, seed=s, keep=2) for s in range(3)]
    assert registry.list_versions(tmp_path) == versions[1:]
    # Roll LATEST back to the older one: retention with keep=1 must still keep it.
    writer._write_pointer(tmp_path, versions[1])
    assert registry.apply_retention(tmp_path, keep=1) == []
    assert registry.list_versions(tmp_path) == versions[1:]
    newest = publish_tiny(tmp_path, seed=9, keep=1)
    assert registry.list_versions(tmp_path) == [newest]
    assert not list(tmp_path.glob(".tmp-*"))


# A writer that stops for good at a chosen point of publish(), so the test can SIGKILL it there.
_KILLED_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from registry import writer
from test_artifacts import publish_tiny

root, marker, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
original = getattr(writer, point)

def stall(*args, **kwargs):
    if point == "_json_bytes" and not args[1].endswith("metrics.json"):
        return original(*args, **kwargs)
    marker.write_text("stalled")
    time.sleep(120)

setattr(writer, point, stall)
publish_tiny(root, seed=5)
"""


@pytest.mark.parametrize("point", ["_json_bytes", "_write_pointer"])
def test_sigkill_mid_publish_leaves_previous_version_intact(tmp_path, point):
    """Killed with the staging folder half written, or before LATEST moves: readers still get the old version."""
    root, marker = tmp_path / "registry", tmp_path / "stalled"
    before = publish_tiny(root, seed=0)
    script = _KILLED_WRITER.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(root), str(marker), point], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the writer exited before stalling"
            assert time.monotonic() < deadline, "the writer never reached the stall point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    if point == "_json_bytes":  # weights written, metrics and manifest not yet
        (staging,) = root.glob(".tmp-*")
        assert (staging / "autorec-u" / "weights.safetensors").exists()
        assert not (staging / "manifest.json").exists()
        assert registry.list_versions(root) == [before]
    else:  # renamed but never pointed at: a complete version, not the current one
        assert len(registry.list_versions(root)) == 2
    assert registry.latest_version(root) == before
    loaded = registry.load_version(root)
    assert loaded.version == before and loaded.models["autorec-u"].metrics["seed"] == 0

    # The next run takes the lock the dead writer held, removes its leftovers and publishes.
    after = publish_tiny(root, seed=1)
    assert registry.latest_version(root) == after
    assert not list(root.glob(".tmp-*"))


def test_failed_publish_writes_nothing(tmp_path):
    first = publish_tiny(tmp_path)
    with pytest.raises(ArtifactError, match="metrics.json"):
        publish_tiny(tmp_path, metrics={"valid": {"rmse": float("nan")}})
    assert registry.list_versions(tmp_path) == [first]
    assert registry.latest_version(tmp_path) == first
    assert not list(tmp_path.glob(".tmp-*"))


def test_publish_rejects_id_maps_that_do_not_fit_the_model(tmp_path):
    staged = {"autorec-u": StagedModel(model=tiny_model(), user_ids=["a"], item_ids=list(range(5)), metrics={})}
    with pytest.raises(ArtifactError, match="1 user ids"):
        registry.publish(tmp_path, staged, {"models": {}}, popularity={"items": [], "counts": []})
    assert registry.latest_version(tmp_path) is None


def resign(root: Path, version: str) -> None:
    """Rewrite the manifest's checksums after a deliberate edit: what a writer who can rewrite the
    manifest does, so the checks behind the checksums are reached."""
    path = root / version / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = registry.file_checksums(root / version)
    path.write_text(json.dumps(manifest))


def test_load_version_reports_what_is_wrong(tmp_path):
    with pytest.raises(ArtifactError, match="no version published"):
        registry.load_version(tmp_path)
    version = publish_tiny(tmp_path)
    folder = tmp_path / version / "autorec-u"

    ids = json.loads((folder / "ids.json").read_text())
    (folder / "ids.json").write_text(json.dumps({"users": ids["users"][:-1], "items": ids["items"]}))
    resign(tmp_path, version)
    with pytest.raises(ArtifactError, match="5 users x 5 items"):
        registry.load_version(tmp_path)

    (folder / "ids.json").unlink()
    resign(tmp_path, version)
    with pytest.raises(ArtifactError, match="has no checksum for autorec-u/ids.json"):
        registry.load_version(tmp_path)
    manifest = json.loads((tmp_path / version / "manifest.json").read_text())
    del manifest["files"]
    (tmp_path / version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="missing ids.json"):
        registry.load_version(tmp_path)

    (tmp_path / "LATEST").write_text("../etc\n")
    with pytest.raises(ArtifactError, match="not a version name"):
        registry.latest_version(tmp_path)


def test_load_version_refuses_a_model_with_non_finite_scores(tmp_path):
    """Finite weights so large that the scores overflow: caught by the smoke recommendation."""
    version = publish_tiny(tmp_path)
    folder = tmp_path / version / "autorec-u"
    model = tiny_model()
    with torch.no_grad():
        model.decoder.weight.fill_(3e38)  # W sigmoid(.) sums 4 of them: past float32's 3.4e38
    assert not registry.non_finite_weights(model)
    model.save(folder)
    resign(tmp_path, version)
    with pytest.raises(ArtifactError, match="non-finite scores"):
        registry.load_version(tmp_path)


def test_publish_writes_a_checksum_for_every_file(tmp_path):
    version = publish_tiny(tmp_path)
    folder = tmp_path / version
    files = json.loads((folder / "manifest.json").read_text())["files"]
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(files) == [f for f in on_disk if f != "manifest.json"]
    assert "autorec-u/weights.safetensors" in files and "popularity.json" in files
    for relative, entry in files.items():
        data = (folder / relative).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last weight's bytes: still a valid safetensors file, with one value changed
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (_truncate, r"weights.safetensors has \d+ bytes, its manifest says \d+"),
    (_flip_a_bit, "weights.safetensors does not match its sha256 in the manifest"),
    (Path.unlink, "autorec-u/weights.safetensors is missing"),
], ids=["truncated", "bit-flipped", "missing"])
def test_load_version_refuses_a_file_that_does_not_match_its_checksum(tmp_path, damage, message):
    version = publish_tiny(tmp_path)
    weights = tmp_path / version / "autorec-u" / "weights.safetensors"
    before = registry.version_stamp(tmp_path, version)
    damage(weights)
    assert registry.version_stamp(tmp_path, version) != before
    with pytest.raises(ArtifactError, match=message):
        registry.load_version(tmp_path)


def test_a_bit_flip_the_checksum_catches_is_a_valid_model_otherwise(tmp_path):
    """Without checksums the flipped file loads and serves other scores: only the checksum tells."""
    version = publish_tiny(tmp_path)
    _flip_a_bit(tmp_path / version / "autorec-u" / "weights.safetensors")
    manifest_path = tmp_path / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]
    manifest_path.write_text(json.dumps(manifest))
    flipped = registry.load_version(tmp_path).models["autorec-u"].model
    rows = sp.csr_matrix(np.array([[5, 0, 3, 0, 1]], dtype=np.float32))
    assert not torch.equal(flipped.scores(rows), tiny_model(0).scores(rows))


def test_a_version_without_checksums_loads_with_a_warning(tmp_path, caplog):
    version = publish_tiny(tmp_path)
    manifest_path = tmp_path / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]
    manifest_path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="registry"):
        assert registry.load_version(tmp_path).version == version
    assert f"version {version} has no checksums" in caplog.text


def test_a_manifest_that_lists_a_path_outside_the_version_is_refused(tmp_path):
    version = publish_tiny(tmp_path)
    (tmp_path / "outside").write_bytes(b"x")
    manifest_path = tmp_path / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../outside"] = {"sha256": hashlib.sha256(b"x").hexdigest(), "bytes": 1}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="its manifest lists '../outside', outside the version"):
        registry.load_version(tmp_path)


def test_non_finite_weights_are_refused_at_load_and_at_publish(tmp_path):
    version = publish_tiny(tmp_path)
    model = tiny_model()
    with torch.no_grad():
        model.encoder.weight[1, 2] = float("inf")
        model.decoder.bias[0] = float("nan")
    model.save(tmp_path / version / "autorec-u")
    resign(tmp_path, version)
    with pytest.raises(ArtifactError, match="non-finite weights .*: 1 values.*: 1 values"):
        registry.load_version(tmp_path)

    staged = {"autorec-u": StagedModel(model=model, user_ids=list(range(6)), item_ids=list(range(5)), metrics={})}
    with pytest.raises(ArtifactError, match="model autorec-u has non-finite weights"):
        registry.publish(tmp_path, staged, {"models": {}}, popularity={"items": [], "counts": []})
    assert registry.list_versions(tmp_path) == [version]


def test_publish_refuses_to_carry_a_damaged_model(tmp_path):
    """A model carried from the previous version is checked against that version's checksums:
    a damaged file is never published again under fresh ones."""
    first = publish_tiny(tmp_path)
    carried = tmp_path / first / "autorec-u"
    staged = {"other": StagedModel(model=tiny_model(1), user_ids=list(range(6)), item_ids=list(range(5)), metrics={})}
    popularity = {"items": [1], "counts": [1]}
    second = registry.publish(tmp_path, staged, {"models": {}}, popularity=popularity, carry_from={"autorec-u": carried})
    files = json.loads((tmp_path / second / "manifest.json").read_text())["files"]
    assert files["autorec-u/weights.safetensors"] == json.loads(
        (tmp_path / first / "manifest.json").read_text())["files"]["autorec-u/weights.safetensors"]

    _flip_a_bit(tmp_path / second / "autorec-u" / "weights.safetensors")
    with pytest.raises(ArtifactError, match="carried from version .*weights.safetensors does not match its sha256"):
        registry.publish(tmp_path, staged, {"models": {}}, popularity=popularity,
                          carry_from={"autorec-u": tmp_path / second / "autorec-u"})
    assert registry.latest_version(tmp_path) == second
