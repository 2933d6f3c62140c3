"""The training loop shared by every model: ``fit(name, interactions, ...)``.

The loop owns all training state (optimiser, step counter for annealing, early
stopping, the best weights); models only say how to batch, what the loss is and
which optimiser their paper used. Closed-form models (EASE, baselines) are solved
in one call.

Validation, when given, picks the epoch: rankers by NDCG@100 on held-out users
(fold-in rows -> targets), rating models by RMSE on held-out ratings. The best
epoch's weights are restored at the end; ``fit`` returns the model with its ``TrainingLog``
(the learning curve, the best epoch and timings).
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import platform
import time
from typing import Any, Callable, NamedTuple, TypedDict

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from errors import TrainingError, UserError
from models.base import ModelInputError, Recommender, TrainData, build_config
from models.scoring import use_tensor_cores
from models.sizes import DataShape, for_data
from trainer import distributed
from trainer.holdout import HOLDOUT_FRACTION, hold_out
from trainer.protocols import HeldOut

VALID_RANKING_K = 100
VALID_RANKING_METRIC = f"ndcg@{VALID_RANKING_K}"
VALID_RATING_METRIC = "rmse"
PRECISIONS = ("fp32", "bf16")


class TrainingLog(TypedDict, total=False):
    """What one ``fit`` recorded; a dict so that it goes into ``metrics.json`` as it is."""

    model: str
    seed: int
    device: str
    precision: str  # the one it trained in: bf16 only for a model that allows it
    curve: list[dict[str, float]]  # one point an epoch: epoch, loss, seconds and the validation metric
    epochs: int  # epochs run (0: closed form)
    best_epoch: int
    valid_metric: str
    valid_value: float  # the best epoch's
    world_size: int  # processes under torchrun
    fit_seconds: float
    holdout: dict[str, Any]  # without ``valid``: what was held out to choose the epochs (``_fit_on_holdout``)


class FitResult(NamedTuple):
    """A trained model, in eval mode, and its log: ``model, log = fit(...)``."""

    model: Recommender
    log: TrainingLog


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto": the GPU when present, the CPU otherwise."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available (use --device auto or cpu)")
    return device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32``, or ``bf16``: mixed precision, the dense layers of the models that allow it
    (``Recommender.reduced_precision``) in bfloat16, weights, gradients and optimiser in float32."""
    if check_precision(precision) == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16 was asked for but this GPU has no bfloat16 support (use fp32)")
    return precision


def model_class(name: str) -> type[Recommender]:
    from models import REGISTRY
    from models.baselines import BASELINES

    known = {**REGISTRY, **BASELINES}
    if name not in known:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)} (baselines: {', '.join(BASELINES)})")
    return known[name]


def validation_score(model: Recommender, train: sp.csr_matrix, valid: Any) -> tuple[str, float, bool]:
    """(metric name, value, higher_is_better) of ``model`` on the validation set."""
    from trainer.evaluation import evaluate_rating, ranked_lists
    from trainer.metrics import ndcg_at_k

    if isinstance(valid, HeldOut):
        ranked, targets = ranked_lists(model, valid, VALID_RANKING_K)  # every epoch: NDCG alone, not the full report
        return VALID_RANKING_METRIC, float(ndcg_at_k(ranked, targets, VALID_RANKING_K).mean()), True
    if sp.issparse(valid):
        report = evaluate_rating(model, train, sp.csr_matrix(valid), fallback=None)
        return VALID_RATING_METRIC, float(report[VALID_RATING_METRIC]), False
    raise UserError(f"valid must be a HeldOut (rankers) or a CSR of held-out ratings, got {type(valid).__name__}")


# glibc's malloc hands a freed block of more than 128 KiB (its default) back to the kernel and
# page-faults a new one in on the next allocation. A training step allocates and frees the same
# few-MiB tensors (bf16 copies of the weights, their gradients) each batch: page faults each step (bench/RESULTS.md, "Figures moved out").
MALLOC_MMAP_THRESHOLD = 32 << 20  # blocks under 32 MiB (glibc's most) come from the heap and are reused
MALLOC_TRIM_THRESHOLD = 256 << 20  # up to 256 MiB of freed heap is kept for the next step
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def reuse_freed_memory() -> bool:
    """Let this process reuse freed tensor memory instead of returning it to the kernel
    (glibc only; process-wide; True when set). ``fit`` calls it."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


def _check_inputs(cls: type[Recommender], X: Any, timestamps: Any) -> sp.csr_matrix:
    if not sp.issparse(X):
        raise UserError(f"interactions must be a scipy.sparse matrix, got {type(X).__name__}")
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sum_duplicates()
    if X.shape[0] == 0 or X.shape[1] == 0 or X.nnz == 0:
        raise UserError(f"cannot train {cls.name} on an empty interaction matrix (shape {X.shape}, {X.nnz} entries)")
    if not np.isfinite(X.data).all():
        raise UserError("interactions contain NaN or infinite values")
    if cls.sequential and timestamps is None:
        raise UserError(f"{cls.name} is sequential: pass timestamps (a CSR with the same pattern as interactions)")
    if timestamps is not None and sp.csr_matrix(timestamps).shape != X.shape:
        raise UserError(f"timestamps have shape {timestamps.shape}, interactions {X.shape}")
    return X


def fit(
    name: str,
    interactions: sp.csr_matrix,
    *,
    timestamps: sp.csr_matrix | None = None,
    valid: HeldOut | sp.csr_matrix | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    rating_range: tuple[float, float] | None = None,
    precision: str = "fp32",
    holdout: float = HOLDOUT_FRACTION,
    on_epoch: Callable[[int, float], None] | None = None,
    **hyper: Any,
) -> FitResult:
    """Train model ``name`` on a users x items CSR; return it, in eval mode, with its log.

    ``interactions``: ratings for rating models; values > 0 are positives for rankers.
    ``timestamps``: same pattern as ``interactions``, for sequential models (svae).
    ``valid``: a ``HeldOut`` (rankers) or a CSR of held-out ratings aligned with the
    rows of ``interactions`` (rating models); used for early stopping.
    ``holdout``: without ``valid``, a gradient-trained model holds out this fraction of its
    input to choose its number of epochs, then trains again on all of it for that many
    (``trainer.holdout``; the log's ``holdout`` says what was held out). ``0``: exactly
    ``epochs`` epochs on everything, nothing held out.
    ``precision``: ``fp32``, or ``bf16`` (``resolve_precision``; a model that does not allow it
    trains in float32, and the log's ``precision`` says which).
    ``on_epoch(epoch, value)``: called after each epoch's validation (gradient-trained models with
    ``valid``); an exception it raises ends the fit (``trainer.tune`` prunes a trial that way).
    ``hyper``: overrides of the model's config dataclass; an unknown name is an error.
    """
    cls = model_class(name)
    X = _check_inputs(cls, interactions, timestamps)
    reuse_freed_memory()
    try:
        config = for_data(build_config(cls.Config, hyper), DataShape.of(X))  # size rules fill what was not given
    except (ModelInputError, TypeError) as exc:
        raise UserError(str(exc)) from None
    if not 0.0 <= holdout < 1.0:
        raise UserError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    if rating_range is None:
        rating_range = (float(X.data.min()), float(X.data.max())) if cls.task == "rating" else (0.0, 1.0)
    if valid is None and holdout > 0 and not cls.closed_form:
        return _fit_on_holdout(name, cls, X, timestamps, holdout, seed=seed, hyper=hyper, device=device,
                               progress=progress, rating_range=rating_range, precision=precision, on_epoch=on_epoch)
    dist_ctx = distributed.context()
    device = distributed.device_for(dist_ctx, resolve_device(device))
    use_tensor_cores(device)
    precision = resolve_precision(precision, device)  # checked for every model, used by those that allow it
    precision = precision if cls.reduced_precision else "fp32"
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)  # same seed on every rank: the same shuffles, sharded by rank
    ts = None if timestamps is None else sp.csr_matrix(timestamps)
    data = TrainData(X=X, timestamps=ts, rating_range=rating_range, rank=dist_ctx.rank, world_size=dist_ctx.world_size)
    model = cls(config, n_items=X.shape[1], n_users=X.shape[0], rating_range=rating_range).to(device)
    if dist_ctx.active:
        # DDP copies rank 0's initial weights to every rank; from here on each rank needs noise of
        # its own (dropout masks, VAE samples), as a single process draws fresh noise for every row.
        torch.manual_seed(seed + dist_ctx.rank)

    started = time.perf_counter()
    log: TrainingLog = {"model": name, "seed": seed, "device": str(device), "precision": precision, "curve": []}
    if cls.closed_form:
        model.solve(data)
        model.prepare_scoring(data)
        log.update(epochs=0, best_epoch=0)
        if valid is not None:
            metric, value, _ = validation_score(model, X, valid)
            log.update(valid_metric=metric, valid_value=value)
            log["curve"].append({"epoch": 0, metric: value})
    else:
        log["world_size"] = dist_ctx.world_size
        _gradient_training(model, data, valid, rng, progress and dist_ctx.is_main, log, bf16=precision == "bf16",
                           on_epoch=on_epoch)
    _check_finite(model)
    log["fit_seconds"] = time.perf_counter() - started
    return FitResult(model.eval(), log)


def _fit_on_holdout(
    name: str, cls: type[Recommender], X: sp.csr_matrix, timestamps: sp.csr_matrix | None, fraction: float, *,
    seed: int, hyper: dict[str, Any], **options: Any,
) -> FitResult:
    """``fit`` without ``valid``: choose the epochs on a held-out part of X, then train on all of X for them."""
    split = hold_out(X, timestamps, rating=cls.task == "rating", sequential=cls.sequential, fraction=fraction, seed=seed)
    if split is None:
        result = fit(name, X, timestamps=timestamps, seed=seed, holdout=0.0, **options, **hyper)
        result.log["holdout"] = {"fraction": fraction, "held_out": "nothing: too little data; trained every epoch"}
        return result
    chosen = fit(name, split.train, timestamps=split.timestamps, valid=split.valid, seed=seed, **options, **hyper)
    epochs = max(1, int(chosen.log["best_epoch"]))
    result = fit(name, X, timestamps=timestamps, seed=seed, holdout=0.0, **options, **{**hyper, "epochs": epochs})
    log = chosen.log
    result.log["holdout"] = {
        "fraction": fraction, "held_out": split.description, "valid_metric": log.get("valid_metric"),
        "valid_value": log.get("valid_value"), "best_epoch": epochs, "epochs_run": log.get("epochs"),
        "curve": log.get("curve", []), "seconds": log.get("fit_seconds"),
    }
    return result


def _gradient_training(
    model: Recommender, data: TrainData, valid: Any, rng: np.random.Generator, progress: bool, log: TrainingLog,
    bf16: bool = False, on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    config = model.config
    try:
        best_state, best_epoch = _epochs(model, data, valid, rng, progress, log, bf16, on_epoch)
    finally:
        model.config = config  # the per-rank batch size of DDP is the epochs' alone, even when one raises
    if best_state is not None:
        model.load_state_dict(best_state)
    log.update(epochs=len(log["curve"]), best_epoch=best_epoch if best_state is not None else len(log["curve"]))
    model.prepare_scoring(data)


def _epochs(
    model: Recommender, data: TrainData, valid: Any, rng: np.random.Generator, progress: bool, log: TrainingLog,
    bf16: bool, on_epoch: Callable[[int, float], None] | None,
) -> tuple[dict[str, torch.Tensor] | None, int]:
    """The epoch loop of ``_gradient_training``: (the best epoch's weights or None without ``valid``, that epoch)."""
    config = model.config
    forward = None
    if data.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Split each batch across ranks so the effective batch, and the number of
        # updates per epoch, match a single process: same math, N times the hands.
        if hasattr(config, "batch_size"):
            model.config = dataclasses.replace(config, batch_size=max(1, config.batch_size // data.world_size))
        ids = [model.device.index] if model.device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=ids)
    if bf16:
        forward = _in_bfloat16(forward or model, model.device.type)
    optimizer = model.configure_optimizer()
    patience = int(getattr(config, "patience", 0) or 0)
    best_value, best_epoch, best_state, stale = None, -1, None, 0
    step = 0
    bar = tqdm(range(int(config.epochs)), desc=f"train {model.name}", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        epoch_started = time.perf_counter()
        model.train()
        # summed on the device and read once an epoch: a read per step makes the host wait for
        # every step before it can queue the next one (bench/gpu.py)
        loss_sum, steps = torch.zeros((), device=model.device), 0
        for batch in model.training_batches(data, rng):
            loss_sum += model.train_step(batch, optimizer, forward=forward, **model.annealing(step, epoch))
            step, steps = step + 1, steps + 1
        mean_loss = float(loss_sum) / steps if steps else float("nan")
        if steps and not math.isfinite(mean_loss):
            raise TrainingError(f"{model.name} produced a non-finite loss ({mean_loss}) in epoch {epoch + 1}")
        model.eval()
        point = {"epoch": epoch + 1, "loss": mean_loss, "seconds": time.perf_counter() - epoch_started}
        if valid is not None:
            model.prepare_scoring(data)
            metric, value, higher = validation_score(model, data.X, valid)
            value = distributed.broadcast_from_main(value)  # every rank keeps the same epoch and stops together
            point[metric] = value
            improved = best_value is None or (value > best_value if higher else value < best_value)
            if improved:
                best_value, best_epoch, stale = value, epoch + 1, 0
                best_state = _snapshot(model, into=best_state)
            else:
                stale += 1
            log.update(valid_metric=metric, valid_value=best_value)
            bar.set_postfix(loss=f"{point['loss']:.4f}", **{metric: f"{value:.4f}"})
        else:
            bar.set_postfix(loss=f"{point['loss']:.4f}")
        log["curve"].append(point)
        if on_epoch is not None and valid is not None:
            try:
                on_epoch(epoch + 1, value)
            except BaseException:
                bar.close()
                raise
        if valid is not None and patience and stale >= patience:
            break
    bar.close()
    return best_state, best_epoch


def _in_bfloat16(forward: Any, device_type: str) -> Any:
    """``forward`` (the loss) under bfloat16 autocast. Only the forward pass is wrapped: the
    backward pass replays the dtypes it recorded, and the weights, their gradients and the
    optimiser stay float32. It pays on bfloat16 hardware (bench/RESULTS.md, "Training speed"). Validation
    and serving stay float32: bfloat16 scores stopped training earlier and lowered test NDCG@100
    (bench/RESULTS.md, "Figures moved out")."""

    def run(batch: Any, **annealing: float) -> torch.Tensor:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            return forward(batch, **annealing)

    return run


def _snapshot(model: Recommender, into: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """A copy of the model's weights, written over the previous copy when there is one: a new
    best epoch then costs a memcpy, not the allocation of every tensor again (bench/RESULTS.md, "Figures moved out")."""
    state = model.state_dict()
    if into is None:
        return {k: v.detach().clone() for k, v in state.items()}
    for key, tensor in state.items():
        into[key].copy_(tensor)
    return into


def _check_finite(model: Recommender) -> None:
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TrainingError(f"{model.name} produced non-finite weights in {key!r}")
