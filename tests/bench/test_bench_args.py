"""The benches' shared arguments: a registry given by a relative path still reaches the servers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench._common import REPO, registry_dir


def test_registry_dir_is_made_absolute_and_must_hold_a_version(tmp_path, monkeypatch):
    registry = tmp_path / "registry"
    registry.mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="not a model registry") as refused:
        registry_dir("registry")  # no LATEST: a server on it would never be ready
    assert str(registry / "LATEST") in str(refused.value)
    (registry / "LATEST").write_text("20260101T000000Z-abcdef\n")
    # The servers run from the repository root: the path they get must not depend on this cwd
    assert registry_dir("registry") == registry and registry_dir("registry").is_absolute()


@pytest.mark.parametrize("script", ["memory", "serving", "soak", "faults"])
def test_each_bench_refuses_a_path_without_a_registry_in_one_line(tmp_path, script):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / f"{script}.py"), "--artifacts-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(f"not a model registry with a published version (no {tmp_path / 'LATEST'})")
