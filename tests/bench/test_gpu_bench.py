"""bench/gpu.py: a tiny CPU run prints every figure against its floor and writes JSON and PNG,
with none of the service's packages importable (a GPU machine has torch, numpy, scipy, pandas,
tqdm, matplotlib, safetensors and typer, but no pydantic, FastAPI or SQLAlchemy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from bench._common import OUT_DIR, REPO

NOT_ON_THE_GPU_MACHINE = ["pydantic", "pydantic_settings", "fastapi", "starlette", "sqlalchemy", "alembic",
                          "psycopg", "redis", "optuna", "uvicorn", "yaml"]


def test_a_tiny_cpu_run_without_the_service_packages_has_every_figure_and_its_floor():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(dir=OUT_DIR))  # the bench names what it wrote relative to the repository
    try:
        run_tiny_bench(out)
    finally:
        shutil.rmtree(out)


def run_tiny_bench(out: Path) -> None:
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Blocked(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {NOT_ON_THE_GPU_MACHINE!r}:
                    raise ModuleNotFoundError(f"not on the GPU machine: {{name}}", name=name)
        sys.meta_path.insert(0, Blocked())
        import bench._common
        bench._common.OUT_DIR = __import__("pathlib").Path({str(out)!r})
        from bench.gpu import main
        sys.exit(main(["--scale", "0.001", "--device", "cpu", "--epochs", "2", "--models", "multvae,ease,autorec-u",
                       "--no-variants", "--name", "tiny"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x floor" in proc.stdout and "floors: Mult-VAE epoch" in proc.stdout
    report = json.loads((out / "tiny.json").read_text())
    assert report["errors"] == {} and all(v > 0 for v in report["floors"].values())
    rows = {row["model"]: row for row in report["models"]}
    assert rows["multvae"]["epoch_x_floor"] > 0 and rows["multvae"]["scoring_x_floor"] > 0
    assert rows["ease"]["fit_x_floor"] > 0 and rows["ease"]["users_per_s"] > 0
    assert rows["autorec-u"]["epoch_s"] > 0 and "rmse" in rows["autorec-u"]
    assert len(report["ease_scoring"]) == 4
    assert (out / "tiny.png").stat().st_size > 0
