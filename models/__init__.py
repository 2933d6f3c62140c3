"""Autoencoder recommenders behind one batched interface (see ``models.base``).

``models.REGISTRY`` maps a model's name to its class; ``models.load(path)`` rebuilds
a saved model. This package imports neither ``trainer`` nor ``service``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from models.base import CONFIG_FILE, WEIGHTS_FILE, ModelInputError, Recommender, TrainData, build_config
from models.scoring import use_tensor_cores

if TYPE_CHECKING:
    REGISTRY: dict[str, type[Recommender]]

__all__ = ["REGISTRY", "Recommender", "ModelInputError", "TrainData", "build_config", "load"]


def _registry() -> dict[str, type[Recommender]]:
    # Explicit, in one place; imported on first use so `import models.base` stays light.
    from models.autorec import AutoRecI, AutoRecU
    from models.cdae import CDAE
    from models.deeprec import DeepRec
    from models.ease import EASE
    from models.edlae import EDLAE
    from models.multdae import MultDAE
    from models.multvae import MultVAE
    from models.recvae import RecVAE
    from models.svae import SVAE

    classes = [AutoRecI, AutoRecU, DeepRec, CDAE, MultVAE, RecVAE, MultDAE, SVAE, EASE, EDLAE]
    return {cls.name: cls for cls in classes}


def __getattr__(attr: str):
    if attr == "REGISTRY":
        registry = _registry()
        globals()["REGISTRY"] = registry
        return registry
    raise AttributeError(f"module 'models' has no attribute {attr!r}")


def load(path: str | Path, map_location: str = "cpu") -> Recommender:
    """Rebuild a model saved with ``Recommender.save`` (weights + config), without the trainer."""
    from safetensors.torch import load_file

    from models.baselines import BASELINES

    path = Path(path)
    meta_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not meta_file.is_file() or not weights_file.is_file():
        raise ModelInputError(f"{path} is not a saved model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    meta = json.loads(meta_file.read_text())
    if meta.get("model") in BASELINES:  # baselines are Recommenders too, kept out of REGISTRY
        registry = BASELINES
    else:
        registry = __getattr__("REGISTRY") if "REGISTRY" not in globals() else globals()["REGISTRY"]
    if meta.get("model") not in registry:
        raise ModelInputError(f"{meta_file}: unknown model {meta.get('model')!r}")
    cls = registry[meta["model"]]
    # a field newer than the saved config takes the value that config trained with, not today's default
    saved = {**getattr(cls.Config, "legacy_defaults", {}), **meta["config"]}
    model = cls(
        build_config(cls.Config, saved),
        n_items=meta["n_items"],
        n_users=meta["n_users"],
        rating_range=tuple(meta["rating_range"]),
    )
    state = load_file(str(weights_file), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelInputError(f"{weights_file}: weights do not match {cls.name} (missing {missing}, unexpected {unexpected})")
    use_tensor_cores(map_location)
    return model.to(map_location).eval()
