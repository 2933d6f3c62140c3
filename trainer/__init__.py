"""The offline job: datasets, protocols, metrics, training loops, artifacts, retraining.

``trainer.fit(name, interactions, ...)`` trains one registered model (see ``trainer.fit``).
"""

from __future__ import annotations


def fit(*args, **kwargs):
    from trainer.training import fit as _fit

    return _fit(*args, **kwargs)


fit.__doc__ = "Train a registered model; see ``trainer.training.fit``."
