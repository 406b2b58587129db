"""One trial's training run, readable top to bottom.

The loop reports the validation metric after every evaluation to a *reporter* (an Optuna
trial, or nothing when run by hand), so a pruner can stop it, and checkpoints often enough that
a killed trial loses at most one checkpoint interval. Everything that decides what the next
batch is (epoch, position in the epoch, RNG states) is in the checkpoint, so a resumed run
computes exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from hpsearch.config import TrainerConfig
from hpsearch.trainer import checkpoint as ckpt
from hpsearch.trainer.batching import bucket_of, bucket_widths, collate, make_batches, rows_for
from hpsearch.trainer.features import IGNORE, Encoded, words_of_windows
from hpsearch.trainer.inputs import Prepared
from hpsearch.trainer.kernels import use_cpu_kernels
from hpsearch.trainer.metrics import ner_scores
from hpsearch.trainer.modeling import build_model


class Reporter(Protocol):
    def report(self, value: float, step: int) -> None: ...
    def should_prune(self) -> bool: ...


class TrialStopped(Exception):
    """The trial ended early for a reason the study should record (nan_loss, oom, ...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class TrialPrunedAt(Exception):
    """The pruner stopped the trial; ``value`` and ``step`` are its last report."""

    def __init__(self, value: float, step: int):
        super().__init__(f"pruned at step {step} with value {value:.4f}")
        self.value, self.step = value, step


class Interrupted(Exception):
    """A stop was requested; a checkpoint was written and the trial can be resumed."""


@dataclass
class TrialResult:
    value: float
    best_step: int
    best_scores: dict[str, Any]
    steps: int
    epochs_done: float
    train_tokens: int
    train_seconds: float
    tokens_per_second: float
    data_seconds: float
    resumed_from_step: int | None
    stopped_early: bool
    history: list[list[float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- set-up helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every CUDA device too


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def lr_at(step: int, cfg: TrainerConfig, total: int, warmup: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): warm up, then decay or hold."""
    if step < warmup:
        return cfg.learning_rate * (step + 1) / (warmup + 1)
    if cfg.schedule == "constant":
        return cfg.learning_rate
    progress = (step - warmup) / max(1, total - warmup)
    if cfg.schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.learning_rate * max(0.0, 1.0 - progress)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on biases and LayerNorm weights: decaying them only hurts (BERT's recipe)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class MetricsLog:
    """metrics.jsonl: one JSON object a line, cut back to the checkpoint on resume."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [
            ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.path)

    def write(self, **row: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _trial_logger(out_dir: Path) -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger(f"hpsearch.trial.{out_dir.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    enc: Encoded,
    gold: list[list[str]],
    labels: list[str],
    *,
    device: torch.device,
    amp: torch.dtype | None,
    pad_id: int,
    max_tokens: int,
    multiple: int = 8,
) -> dict[str, Any]:
    """Scores on every word of every sentence, windows joined back together."""
    was_training = model.training
    model.eval()
    preds: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(enc)
    loss_sum, n_tok = 0.0, 0
    for idx in make_batches(enc.lengths, max_tokens=max_tokens, shuffle=False):
        batch = collate(enc, idx, pad_id, multiple=multiple)
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with _autocast(device, amp):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logits = logits.float()
        loss_sum += F.cross_entropy(
            logits.view(-1, logits.shape[-1]), b["labels"].view(-1),
            ignore_index=IGNORE, reduction="sum",
        ).item()
        n_tok += int((b["labels"] != IGNORE).sum())
        arg = logits.argmax(-1).cpu().numpy()
        for row, w in enumerate(idx):
            preds[w] = arg[row, : enc.lengths[w]]
    model.train(was_training)
    pred_tags = [[labels[i] for i in sent] for sent in words_of_windows(enc, preds)]
    scores = ner_scores(gold, pred_tags)
    scores["loss"] = loss_sum / max(1, n_tok)
    return scores


def _autocast(device: torch.device, amp: torch.dtype | None):
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


# ----------------------------------------------------------------------------- the fast path


@dataclass
class Plan:
    """How batches are shaped and the model is run, decided once per trial and logged."""

    widths: tuple[int, ...] | None  # bucket widths on the fast path, else pad to `multiple`
    multiple: int
    sync_every: int  # steps between host reads of the on-device loss check
    graphs: bool  # torch.compile(mode="reduce-overhead"): CUDA graphs, one per shape
    compiled: bool
    why: str
    cpu_kernels: bool = False  # dropout masks and attention from trainer/kernels.py


def make_plan(cfg: TrainerConfig, device: torch.device) -> Plan:
    """The fast path where it applies (CUDA, or forced), the plain loop everywhere else.

    At 32 sentences a step a GPU waits on kernel launches, not arithmetic: static shapes let
    each bucket's forward and backward be captured once as a CUDA graph and replayed, and
    keeping the host from reading device values every step lets the CPU run ahead. A CPU
    gains from neither, and pads only to what the batch needs.
    """
    cuda = device.type == "cuda"
    multiple = 8 if cuda else 1
    sync_every = 0 if cuda else 1  # 0: filled in with the logging interval
    # On a CPU the fast path is cheaper dropout masks and attention (see kernels.py); a
    # compiled model fuses those itself.
    kernels = not cuda and cfg.fast_path != "off" and not cfg.compile
    if cfg.fast_path == "off":
        return Plan(None, multiple, sync_every, False, cfg.compile, "fast path off")
    if cfg.fast_path == "auto" and not cuda:
        why = "fast path: CPU kernels" if kernels else "fast path off (compiled)"
        return Plan(None, multiple, sync_every, False, cfg.compile, why, kernels)
    widths = bucket_widths(cfg.buckets, cfg.max_length)
    graphs = cuda and _has_triton()
    why = f"fast path: buckets {list(widths)}"
    if cuda and not graphs:
        why += ", no triton: eager"
    elif not cuda:
        why += ", no CUDA: no graphs" + (", CPU kernels" if kernels else "")
    return Plan(widths, multiple, sync_every, graphs, graphs or cfg.compile, why, kernels)


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


def _capture(net, batches, width_of, make_batch, device, amp, scaler, log) -> set[tuple]:
    """Compile and record every bucket's graph before the first step, not in the middle.

    Two passes per shape: CUDA graph trees record on the second call. The RNG is put back
    afterwards, so a resumed trial draws exactly what the uninterrupted one did.
    """
    t0 = time.perf_counter()
    first: dict[int, np.ndarray] = {}
    for idx in batches:
        first.setdefault(width_of(idx), idx)
    shapes = set()
    gpus = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=gpus):
        for width in sorted(first):
            batch = {k: v.to(device) for k, v in make_batch(first[width]).items()}
            for _ in range(2):
                torch.compiler.cudagraph_mark_step_begin()
                _forward_backward(net, batch, device, amp, scaler)
                for p in net.parameters():
                    p.grad = None
            shapes.add(tuple(batch["input_ids"].shape))
    torch.cuda.synchronize(device)
    log.info("captured %d shapes in %.1fs: %s", len(shapes), time.perf_counter() - t0,
             sorted(shapes))
    return shapes


def _compile_failed(log: logging.Logger, e: Exception) -> None:
    log.warning("torch.compile failed, continuing without it: %s: %s", type(e).__name__,
                str(e).splitlines()[0] if str(e) else "")


def _forward_backward(net, batch, device, amp, scaler) -> torch.Tensor:
    with _autocast(device, amp):
        loss = net(**batch).loss
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss


# ----------------------------------------------------------------------------- training


def train(
    cfg: TrainerConfig,
    prep: Prepared,
    out_dir: Path,
    *,
    reporter: Reporter | None = None,
    resume_from: Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    metric: str = "f1",
    maximize: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> TrialResult:
    """Train one trial. ``on_step(step, train_tokens)`` runs after every optimizer step."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log, handler = _trial_logger(out_dir)
    try:
        return _train(cfg, prep, out_dir, log, reporter, resume_from, should_stop, metric,
                      maximize, on_step)
    finally:
        log.removeHandler(handler)
        handler.close()


def _train(cfg, prep, out_dir, log, reporter, resume_from, should_stop, metric, maximize,
           on_step):
    seed = cfg.seed or 0
    seed_everything(seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    amp = resolve_precision(cfg.precision, device)
    if amp is not None and device.type == "cpu" and amp == torch.float16:
        raise TrialStopped("config", "precision fp16 needs a CUDA device")
    plan = make_plan(cfg, device)
    log.info("params %s", json.dumps(cfg.model_dump(mode="json")))
    log.info("device %s, autocast %s, %s%s", device, amp, plan.why,
             ", torch.compile" if plan.compiled and not plan.graphs else "")
    data_seconds, data_source = prep.cost()
    log.info("data %.2fs (%s)", data_seconds, data_source)

    model = build_model(cfg, prep.tokenizer, prep.labels, log=log).to(device)
    if plan.cpu_kernels:
        log.info("CPU kernels: %s", use_cpu_kernels(model))
    net = model  # what the steps run; checkpoints keep the plain model's names
    if plan.graphs:
        net = torch.compile(model, mode="reduce-overhead", dynamic=False)
    elif plan.compiled:
        net = torch.compile(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        fused=True,  # one kernel per group on CUDA, a vectorised loop on CPU; same maths
    )
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    pad_id = prep.tokenizer.pad_token_id or 0

    lengths = prep.train.lengths
    epochs = [
        make_batches(lengths, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size, seed=seed,
                     epoch=e, widths=plan.widths)
        for e in range(cfg.max_epochs)
    ]
    total = sum(len(b) for b in epochs)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = math.ceil(cfg.warmup_ratio * total)
    log_every = max(1, total // 100)
    sync_every = plan.sync_every or log_every
    eval_kw = dict(device=device, amp=amp, pad_id=pad_id, max_tokens=cfg.eval_batch_tokens,
                   multiple=plan.multiple)

    def width_of(idx: np.ndarray) -> int:
        return bucket_of(int(lengths[idx].max()), plan.widths)

    def make_batch(idx: np.ndarray) -> dict[str, torch.Tensor]:
        if plan.widths is None:
            return collate(prep.train, idx, pad_id, multiple=plan.multiple)
        width = width_of(idx)
        rows = rows_for(width, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size)
        return collate(prep.train, idx, pad_id, width=width, rows=rows)

    # Position and what has been learnt so far: all of it goes into every checkpoint.
    st: dict[str, Any] = {
        "step": 0, "epoch": 0, "batch": 0, "best": None, "best_step": 0, "best_scores": {},
        "history": [], "bad_evals": 0, "train_tokens": 0, "train_seconds": 0.0,
        "config": cfg.model_dump(mode="json", exclude={"progress", "num_threads", "device",
                                                       "fast_path", "buckets"}),
        "widths": list(plan.widths) if plan.widths and cfg.batch_size is None else None,
    }
    ckpt_root = out_dir / "checkpoints"
    metrics = MetricsLog(out_dir / "metrics.jsonl")
    resumed_from = None
    found = ckpt.latest(resume_from) if resume_from else None
    found = found or ckpt.latest(ckpt_root)
    if found is not None:
        if found.state.get("config") != st["config"]:
            raise TrialStopped(
                "checkpoint_mismatch",
                f"{found.path} was written by a run with other settings; refusing to mix them",
            )
        if found.state.get("widths") != st["widths"]:  # a budget's batches follow the buckets
            raise TrialStopped(
                "checkpoint_mismatch",
                f"{found.path} was written with batches cut for buckets {found.state['widths']}"
                f" but this run uses {st['widths']} (fast_path on another device?)",
            )
        ckpt.restore(found, model=model, optimizer=optimizer, scaler=scaler)
        st.update({k: v for k, v in found.state.items() if k != "rng"})
        resumed_from = st["step"]
        metrics.truncate_after(st["step"])
        log.info("resumed from %s at step %d", found.path, st["step"])
        if reporter is not None:
            for step, value in st["history"]:  # the pruner judges the whole curve
                reporter.report(value, int(step))
        if found.path.parent != ckpt_root:  # adopt the old trial's checkpoint as our own
            ckpt.save(ckpt_root, model=model, optimizer=optimizer, scaler=scaler, state=st)
            # and its best weights: the best evaluation may have come before the interruption.
            old_best = found.path.parent.parent / "best" / "model.safetensors"
            if old_best.exists():
                _copy_atomic(old_best, out_dir / "best" / "model.safetensors")

    # A bad loss is flagged on the device and read every `sync_every` steps: reading it every
    # step would make the CPU wait for the GPU each time.
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    checked = st["step"]

    def check_finite(lr: float) -> None:
        nonlocal checked
        if bool(nonfinite):
            where = (f"at step {st['step']}" if checked + 1 == st["step"]
                     else f"between steps {checked + 1} and {st['step']}")
            raise TrialStopped("nan_loss", f"loss is not finite {where} (lr {lr:.3g})")
        checked = st["step"]

    def save_checkpoint() -> None:
        try:
            ckpt.save(ckpt_root, model=model, optimizer=optimizer, scaler=scaler, state=st)
        except OSError as e:
            if e.errno == 28:  # ENOSPC: the previous checkpoint is still whole
                raise TrialStopped("disk_full", f"no space left writing a checkpoint: {e}") from e
            raise

    def better(v: float) -> bool:
        if st["best"] is None:
            return True
        delta = cfg.early_stopping.min_delta if cfg.early_stopping else 0.0
        return v > st["best"] + delta if maximize else v < st["best"] - delta

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=st["step"], desc=out_dir.name, leave=False,
               disable=None if cfg.progress else True, dynamic_ncols=True)
    window_tokens, window_t0 = 0, time.perf_counter()
    shapes_run: set[tuple[int, ...]] = set()
    model.train()
    t_start = time.perf_counter() - st["train_seconds"]
    if plan.graphs:
        bar.set_postfix_str("compiling and capturing one CUDA graph per bucket")
        try:
            shapes_run = _capture(net, epochs[min(st["epoch"], len(epochs) - 1)], width_of,
                                  make_batch, device, amp, scaler, log)
        except Exception as e:
            if isinstance(e, torch.OutOfMemoryError):
                raise
            _compile_failed(log, e)
            net, plan.graphs = model, False
        optimizer.zero_grad(set_to_none=True)
    stopped_early = False
    try:
        while st["step"] < total:
            idx = epochs[st["epoch"]][st["batch"]]
            batch = make_batch(idx)
            n_tokens = int(lengths[idx].sum())
            if device.type == "cuda":
                batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
            lr = lr_at(st["step"], cfg, total, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr

            shape = tuple(batch["input_ids"].shape)
            if plan.graphs:
                torch.compiler.cudagraph_mark_step_begin()
            try:
                loss = _forward_backward(net, batch, device, amp, scaler)
            except Exception as e:  # a shape's first compile can fail; eager always works
                if net is model or shape in shapes_run or isinstance(e, torch.OutOfMemoryError):
                    raise
                _compile_failed(log, e)
                net, plan.graphs = model, False
                optimizer.zero_grad(set_to_none=True)
                loss = _forward_backward(model, batch, device, amp, scaler)
            shapes_run.add(shape)
            nonfinite.logical_or_(~torch.isfinite(loss.detach()))
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if cfg.max_grad_norm
                else None
            )
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            st["step"] += 1
            st["batch"] += 1
            st["train_tokens"] += n_tokens
            window_tokens += n_tokens
            epoch_done = st["batch"] == len(epochs[st["epoch"]])
            if epoch_done:
                st["epoch"] += 1
                st["batch"] = 0
            bar.update(1)
            if on_step is not None:
                on_step(st["step"], st["train_tokens"])

            due_eval = (
                st["step"] % cfg.eval_every == 0 if cfg.eval_every else epoch_done
            ) or st["step"] == total
            due_ckpt = st["step"] < total and (
                due_eval or (cfg.checkpoint_every and st["step"] % cfg.checkpoint_every == 0)
            )
            if due_eval or due_ckpt or st["step"] % sync_every == 0:
                check_finite(lr)

            if st["step"] % log_every == 0:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_t0, 1e-9)
                window_tokens, window_t0 = 0, now
                loss_value = loss.item()
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tps:,.0f}")
                metrics.write(step=st["step"], loss=loss_value, lr=lr,
                              grad_norm=float(grad_norm) if grad_norm is not None else None,
                              tokens_per_s=tps, epoch=st["epoch"])

            if due_eval:
                scores = evaluate(model, prep.val, prep.val_gold, prep.labels, **eval_kw)
                value = float(scores[metric])
                st["history"].append([st["step"], value])
                if better(value):
                    st.update(best=value, best_step=st["step"], best_scores=scores, bad_evals=0)
                    _save_best(model, out_dir)
                else:
                    st["bad_evals"] += 1
                metrics.write(step=st["step"], epoch=st["epoch"], eval=True,
                              **{f"val_{k}": v for k, v in scores.items() if k != "per_type"})
                log.info("step %d val %s %.4f (best %.4f at %d) loss %.4f", st["step"], metric,
                         value, st["best"], st["best_step"], scores["loss"])
                if reporter is not None:
                    reporter.report(value, st["step"])
                    if reporter.should_prune():
                        log.info("pruned at step %d", st["step"])
                        raise TrialPrunedAt(value, st["step"])
                es = cfg.early_stopping
                if es and st["bad_evals"] >= es.patience and st["epoch"] >= es.min_epochs:
                    log.info("early stop at step %d: %d evals without gain", st["step"],
                             es.patience)
                    stopped_early = True
                    break
            st["train_seconds"] = time.perf_counter() - t_start
            if due_ckpt:
                save_checkpoint()
            if should_stop():
                check_finite(lr)
                save_checkpoint()
                log.info("stop requested; checkpoint written at step %d", st["step"])
                raise Interrupted(f"stopped at step {st['step']}")
    finally:
        bar.close()

    st["train_seconds"] = time.perf_counter() - t_start
    log.info("done: best %s %.4f at step %d (%d tokens, %.0f tokens/s)", metric, st["best"],
             st["best_step"], st["train_tokens"],
             st["train_tokens"] / max(st["train_seconds"], 1e-9))
    return TrialResult(
        value=float(st["best"]),
        best_step=st["best_step"],
        best_scores=st["best_scores"],
        steps=st["step"],
        epochs_done=st["epoch"] + st["batch"] / len(epochs[min(st["epoch"], len(epochs) - 1)]),
        train_tokens=st["train_tokens"],
        train_seconds=st["train_seconds"],
        tokens_per_second=st["train_tokens"] / max(st["train_seconds"], 1e-9),
        data_seconds=data_seconds,
        resumed_from_step=resumed_from,
        stopped_early=stopped_early,
        history=st["history"],
    )


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _save_best(model: torch.nn.Module, out_dir: Path) -> None:
    """The best evaluation's weights, so the study can hand back a model, not just a number."""
    from safetensors.torch import save_file

    target = out_dir / "best" / "model.safetensors"
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, target)
