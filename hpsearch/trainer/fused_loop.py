"""K trials trained as one fused array (fusion.py), each in a slot of its own.

A slot holds one trial at a time. Each member reads its own batch at its own position, has its
own learning-rate schedule, clipping, optimizer state and loss check, is evaluated, reported to
the pruner, checkpointed and finished exactly as the solo loop (loop.py) would, into its own
trial folder in the solo formats. When a member ends (finished, pruned, failed) its slot takes
the next trial from the ``Feed`` at once, starting from the same initial weights a solo trial
starts from, so the array stays full while trials remain; an empty slot is masked out.

The array is built and its kernels warmed once; every refill reuses them.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from hpsearch.config import TrainerConfig
from hpsearch.config.trainer import RUN_ONLY
from hpsearch.trainer import checkpoint as ckpt
from hpsearch.trainer import trial_dir
from hpsearch.trainer.batching import make_batches
from hpsearch.trainer.evaluation import EvalSettings, evaluate_members
from hpsearch.trainer.fastpath import make_plan, plan_batch
from hpsearch.trainer.fusion import (
    FusedAdamW,
    FusedModel,
    MemberScaler,
    clip_grad_norm_per_member,
    member_losses,
    stack_member_batches,
)
from hpsearch.trainer.inputs import Prepared
from hpsearch.trainer.kernels import use_cpu_kernels
from hpsearch.trainer.modeling import build_model
from hpsearch.trainer.monitor import Monitor, StepRow, eval_health, steps_rows
from hpsearch.trainer.optim import lr_at, total_steps, warmup_steps
from hpsearch.trainer.runtime import (
    autocast,
    resolve_device,
    resolve_precision,
    seed_everything,
    trial_logger,
)
from hpsearch.trainer.state import (
    Interrupted,
    Reporter,
    TrainState,
    TrialPrunedAt,
    TrialResult,
    TrialStopped,
    find_checkpoint,
    judge,
    take_over,
)


@dataclass
class Job:
    """One trial for a slot: its settings, its folder, whom it reports to, where it resumes."""

    cfg: TrainerConfig
    out_dir: Path
    reporter: Reporter | None = None
    resume_from: Path | None = None
    tag: Any = None  # the caller's handle on the trial


class Feed(Protocol):
    """Where slots get their trials and hand back how each ended."""

    def next_job(self) -> Job | None: ...
    def done(self, job: Job, result: TrialResult | None, error: Exception | None) -> None: ...


@dataclass
class _Member:
    """What one slot's trial has that the others do not."""

    job: Job
    st: TrainState
    total: int
    warmup: int
    log: logging.Logger
    handler: logging.Handler
    metrics: trial_dir.MetricsLog
    resumed_from: int | None = None
    data_seconds: float = 0.0
    t_start: float = field(default_factory=time.perf_counter)
    t_enter: float = field(default_factory=time.perf_counter)
    checked: int = 0
    startup_seconds: float | None = None
    first_step_at: float | None = None


def train_fused(
    base: TrainerConfig,
    prep: Prepared,
    k: int,
    feed: Feed,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    metric: str = "f1",
    maximize: bool = True,
) -> None:
    """Train the feed's trials ``k`` at a time until it has none left; raises ``Interrupted``
    (every member checkpointed) on a stop request."""
    t0 = time.perf_counter()
    array = _Array(base, prep, k, metric, maximize)
    while array.fill(feed):
        # ---- the members' batches, one forward and backward for all, an update each
        array.step()
        # ---- what this step owes each member: a loss check, its rows, an evaluation
        owed: dict[int, tuple[bool, bool, bool]] = {}
        for slot, m in array.members():
            st, cfg = m.st, m.job.cfg
            last = st.step == m.total
            due_eval = (st.step % cfg.eval_every == 0 if cfg.eval_every else st.batch == 0) \
                or last
            due_ckpt = not last and (
                due_eval or bool(cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0))
            owed[slot] = due_eval, due_ckpt, last
        if array.steps % array.sync_every == 0 or any(e or c for e, c, _ in owed.values()):
            array.flush()  # every member's rows since the last flush, in one read
            for slot in list(owed):
                try:
                    array.check_finite(slot)
                except TrialStopped as e:
                    array.finish(slot, feed, e)
                    del owed[slot]
        # ---- evaluate the members due (one pass for all); the pruner may end one here
        scores = array.score([slot for slot, (due_eval, _, _) in owed.items() if due_eval])
        for slot, (due_eval, due_ckpt, last) in owed.items():
            m = array.slots[slot]
            try:
                if due_eval and (array.judge(slot, scores[slot]) or last):
                    array.finish(slot, feed)
                    continue
                m.st.train_seconds = time.perf_counter() - m.t_start
                if due_ckpt:
                    array.checkpoint(slot)
            except (TrialStopped, TrialPrunedAt) as e:
                array.finish(slot, feed, e)
        for _, m in array.members():
            if m.first_step_at is None:  # the array's start-up, or a refill's (none)
                first = array.steps == 1
                m.startup_seconds = time.perf_counter() - (t0 if first else m.t_enter)
                m.first_step_at = time.time()
                m.log.info("first step done %.1fs after the %s", m.startup_seconds,
                           "array started" if first else "trial took its slot")
        # ---- a requested stop checkpoints every member and leaves
        if should_stop():
            array.flush()
            for slot, _ in array.members():
                try:
                    array.check_finite(slot)
                    array.checkpoint(slot)
                except TrialStopped as e:
                    array.finish(slot, feed, e)
            raise Interrupted(f"stopped; {len(array.members())} fused trials checkpointed")


class _Array:
    """The fused model, its optimizer and the slots, set up once; methods are the stages."""

    def __init__(self, base: TrainerConfig, prep: Prepared, k: int, metric: str,
                 maximize: bool):
        self.base, self.prep, self.k, self.metric, self.maximize = base, prep, k, metric, maximize
        self.device = resolve_device(base.device)
        self.amp = resolve_precision(base.precision, self.device)
        if base.num_threads:
            torch.set_num_threads(base.num_threads)
        self.plan = make_plan(base, self.device)
        t0 = time.perf_counter()
        # ---- the weights every trial starts from: a solo trial's, seeded the same way
        seed_everything(base.seed or 0)
        template = build_model(base, prep.tokenizer, prep.labels)
        if self.plan.cpu_kernels:
            use_cpu_kernels(template)
        self.initial = {n: t.detach().clone() for n, t in template.state_dict().items()}
        self._initials: dict[int, dict[str, torch.Tensor]] = {}  # other seeds' (confirm.py)
        self.template = template
        self.model = FusedModel([template] * k).to(self.device)
        self.model.train()
        self.optimizer = FusedAdamW(self.model, weight_decay=base.weight_decay,
                                    betas=(base.adam_beta1, base.adam_beta2),
                                    eps=base.adam_epsilon, lr=base.learning_rate)
        # fp16: a loss scale per member, so one member's overflow skips no one else's step
        self.scaler = MemberScaler(k, self.device) if self.amp == torch.float16 else None
        self.monitor = Monitor(self.model, base.monitor_every, members=k)
        self.pending: list[StepRow] = []  # array steps not yet read off the device
        self.build_seconds = time.perf_counter() - t0
        self.pad_id = prep.tokenizer.pad_token_id or 0
        self.slots: list[_Member | None] = [None] * k
        self.nonfinite = torch.zeros(k, dtype=torch.bool, device=self.device)
        self.sync_every = self.plan.sync_every or 10
        self.steps = 0  # steps the array has taken, whoever was in its slots
        self._batches: dict[tuple, list[np.ndarray]] = {}
        self._lrs = [0.0] * k  # each slot's learning rate at the last step
        self._health: dict[str, Any] = {}  # the last evaluation pass's latency and memory

    def members(self) -> list[tuple[int, _Member]]:
        return [(i, m) for i, m in enumerate(self.slots) if m is not None]

    def batches(self, cfg: TrainerConfig, epoch: int) -> list[np.ndarray]:
        """An epoch's batches, decided by the seed and the batch size alone: the same for
        every member but one retried with a smaller batch after running out of memory."""
        key = (epoch, cfg.max_tokens, cfg.batch_size, cfg.seed)
        if key not in self._batches:
            self._batches[key] = make_batches(
                self.prep.train.lengths, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size,
                seed=cfg.seed or 0, epoch=epoch, widths=self.plan.widths)
        return self._batches[key]

    # ----------------------------------------------------------------------------- slots

    def fill(self, feed: Feed) -> bool:
        """Give every empty slot the feed's next trial; False once no slot has one.

        When the feed has no trial left for a slot, the array shrinks to the slots it still
        uses: at the tail of a study an empty slot would cost as much as a full one.
        """
        for slot in range(self.k):
            while self.slots[slot] is None:
                job = feed.next_job()
                if job is None:
                    break
                try:
                    self._start(slot, job)
                except Exception as e:  # its checkpoint does not fit, say: it alone fails
                    self._close(slot)
                    feed.done(job, None, e)
            if self.slots[slot] is None:
                break
        live = [i for i, m in enumerate(self.slots) if m is not None]
        if live and len(live) < self.k:
            self._shrink(live)
        return bool(live)

    def _shrink(self, live: list[int]) -> None:
        """A fused model of the ``live`` members only, each carrying on exactly where it was."""
        members = [(self.slots[i], self.model.member_state_dict(i),
                    self.optimizer.member_state_dict(i)) for i in live]
        self.k = len(live)
        self.model = FusedModel([self.template] * self.k).to(self.device)
        self.model.train()
        self.optimizer = FusedAdamW(self.model, weight_decay=self.base.weight_decay,
                                    betas=(self.base.adam_beta1, self.base.adam_beta2),
                                    eps=self.base.adam_epsilon, lr=self.base.learning_rate)
        for new, (m, weights, opt) in enumerate(members):
            self.model.load_member_state_dict(new, weights)
            self.model.set_dropout(new, m.job.cfg.dropout)
            self.optimizer.load_member_state_dict(new, opt)
        self.nonfinite = self.nonfinite[live].clone()
        self.monitor = Monitor(self.model, self.base.monitor_every, members=self.k)
        if self.scaler is not None:
            self.scaler.keep(live)
        self.slots = [m for m, _, _ in members]
        self._lrs = [self._lrs[i] for i in live]

    def _start(self, slot: int, job: Job) -> None:
        cfg = job.cfg
        if self.scaler is not None and self.device.type != "cuda":
            raise TrialStopped("config", "precision fp16 needs a CUDA device")
        job.out_dir.mkdir(parents=True, exist_ok=True)
        log, handler = trial_logger(job.out_dir)
        total = total_steps(cfg, [len(self.batches(cfg, e)) for e in range(cfg.max_epochs)])
        st = TrainState(config=cfg.model_dump(mode="json", exclude=set(RUN_ONLY)),
                        widths=list(self.plan.widths) if self.plan.widths
                        and cfg.batch_size is None else None)
        m = _Member(job, st, total, warmup_steps(cfg, total), log, handler,
                    trial_dir.MetricsLog(job.out_dir))
        self.slots[slot] = m
        log.info("params %s", json.dumps(cfg.model_dump(mode="json")))
        log.info("device %s, autocast %s, fused array of %d (slot %d), %s", self.device,
                 self.amp, self.k, slot, self.plan.why)
        m.data_seconds, source = self.prep.cost()
        log.info("data %.2fs (%s); array built in %.1fs", m.data_seconds, source,
                 self.build_seconds)
        self.model.load_member_state_dict(slot, self.initial_weights(cfg.seed))
        self.model.set_dropout(slot, cfg.dropout)
        self.optimizer.reset_member(slot, weight_decay=cfg.weight_decay,
                                    betas=(cfg.adam_beta1, cfg.adam_beta2),
                                    eps=cfg.adam_epsilon, lr=cfg.learning_rate)
        self.nonfinite[slot] = False
        if self.scaler is not None:
            self.scaler.reset_member(slot)
        found = find_checkpoint(job.resume_from, trial_dir.checkpoints(job.out_dir), st)
        if found is not None:
            weights, blob = ckpt.read(found)
            self.model.load_member_state_dict(slot, weights)
            self.optimizer.load_member_state_dict(slot, blob["optimizer"])
            if self.scaler is not None:
                self.scaler.load_member_state_dict(slot, blob["scaler"])
            take_over(st, found, m.metrics, log, job.reporter)
            m.resumed_from = m.checked = st.step
            if found.path.parent != trial_dir.checkpoints(job.out_dir):  # adopt it
                self.checkpoint(slot)
                trial_dir.adopt_best(found.path.parent.parent, job.out_dir)
        m.t_start = time.perf_counter() - st.train_seconds

    def initial_weights(self, seed: int | None) -> dict[str, torch.Tensor]:
        """The weights a solo trial with this trainer seed starts from: the array's own, or
        (a finalist's confirmation run with another seed) built once for that seed, without
        touching the random streams the running members draw their dropout masks from."""
        seed = seed or 0
        if seed == (self.base.seed or 0):
            return self.initial
        if seed not in self._initials:
            gpus = [self.device.index or 0] if self.device.type == "cuda" else []
            states = random.getstate(), np.random.get_state()
            with torch.random.fork_rng(devices=gpus):
                seed_everything(seed)
                model = build_model(self.base, self.prep.tokenizer, self.prep.labels)
                if self.plan.cpu_kernels:
                    use_cpu_kernels(model)
                self._initials[seed] = {n: t.detach().clone()
                                        for n, t in model.state_dict().items()}
            random.setstate(states[0])
            np.random.set_state(states[1])
        return self._initials[seed]

    def _close(self, slot: int) -> None:
        m = self.slots[slot]
        if m is not None:
            m.log.removeHandler(m.handler)
            m.handler.close()
        self.slots[slot] = None

    def flush(self) -> None:
        """Every pending step's rows into each member's metrics.jsonl (before a slot changes
        hands: the rows are by slot)."""
        if not self.pending:
            return
        rows = steps_rows(self.pending, self.monitor)
        self.pending = []
        for slot, m in self.members():
            if rows[slot]:
                elapsed = max(time.perf_counter() - m.t_start, 1e-9)
                rows[slot][-1]["tokens_per_s"] = m.st.train_tokens / elapsed
                m.metrics.write_rows(rows[slot])

    def finish(self, slot: int, feed: Feed, error: Exception | None = None) -> None:
        """The member's trial ends: hand its result (or why it stopped) back; free the slot."""
        self.flush()
        m = self.slots[slot]
        st = m.st
        result = None
        if error is None:
            st.train_seconds = time.perf_counter() - m.t_start
            m.log.info("done: best %s %.4f at step %d (%d tokens, %.0f tokens/s)", self.metric,
                       st.best, st.best_step, st.train_tokens,
                       st.train_tokens / max(st.train_seconds, 1e-9))
            result = TrialResult(
                value=float(st.best), best_step=st.best_step, best_scores=st.best_scores,
                steps=st.step, train_tokens=st.train_tokens, train_seconds=st.train_seconds,
                tokens_per_second=st.train_tokens / max(st.train_seconds, 1e-9),
                data_seconds=m.data_seconds, resumed_from_step=m.resumed_from,
                history=st.history, startup_seconds=m.startup_seconds,
                first_step_at=m.first_step_at)
        self._close(slot)
        feed.done(m.job, result, error)

    # ----------------------------------------------------------------------------- stages

    def step(self) -> None:
        """One optimizer step of every member on its own next batch."""
        batches: list[dict[str, torch.Tensor] | None] = [None] * self.k
        for slot, m in self.members():
            idx = self.batches(m.job.cfg, m.st.epoch)[m.st.batch]
            batches[slot] = plan_batch(self.plan, self.prep.train, idx, self.pad_id,
                                       m.job.cfg)
            m.st.train_tokens += int(self.prep.train.lengths[idx].sum())
        batch = {n: t.to(self.device, non_blocking=True)
                 for n, t in stack_member_batches(batches, self.pad_id).items()}
        active = torch.tensor([b is not None for b in batches], device=self.device)
        watch = self.monitor.due(self.steps + 1)
        with self.monitor.watching(batch["attention_mask"]) if watch else nullcontext():
            with autocast(self.device, self.amp):
                logits = self.model(batch["input_ids"], batch["attention_mask"])
        losses = member_losses(logits, batch["labels"])
        scaled = losses if self.scaler is None else self.scaler.scale_losses(losses)
        torch.where(active, scaled, torch.zeros_like(scaled)).sum().backward()
        self.nonfinite |= active & ~torch.isfinite(losses.detach())
        # fp16: a member whose scaled gradients overflowed skips this step, as solo it would
        overflow = None if self.scaler is None else self.scaler.unscale_(self.model)
        norms = self.monitor.grad_norms() if watch else None
        total_norm = clip_grad_norm_per_member(self.model, [
            None if m is None else m.job.cfg.max_grad_norm for m in self.slots])
        lrs = [0.0 if m is None else lr_at(m.st.step, m.job.cfg, m.total, m.warmup)
               for m in self.slots]
        self.optimizer.step(lrs, active if overflow is None else active & ~overflow)
        if self.scaler is not None:
            self.scaler.update(overflow, active)
        self.optimizer.zero_grad()
        self.steps += 1
        for _, m in self.members():
            m.st.step += 1
        self.pending.append(StepRow(
            [None if m is None else m.st.step for m in self.slots],
            [0 if m is None else m.st.epoch for m in self.slots], lrs, losses.detach(),
            total_norm, norms, self.monitor.take_activations() if watch else None))
        for _, m in self.members():
            st = m.st
            st.batch += 1
            if st.batch == len(self.batches(m.job.cfg, st.epoch)):
                st.epoch += 1
                st.batch = 0
        self._lrs = lrs

    def check_finite(self, slot: int) -> None:
        m = self.slots[slot]
        st = m.st
        if bool(self.nonfinite[slot]):
            where = (f"at step {st.step}" if m.checked + 1 == st.step
                     else f"between steps {m.checked + 1} and {st.step}")
            raise TrialStopped("nan_loss", f"loss is not finite {where} "
                                           f"(lr {self._lrs[slot]:.3g})")
        m.checked = st.step

    def score(self, slots: list[int]) -> dict[int, dict[str, Any]]:
        """Validation scores of the given members, in one pass of the array over the data."""
        if not slots:
            return {}
        k, cfg = self.k, self.base

        def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.model(ids.expand(k, *ids.shape), mask.expand(k, *mask.shape))

        self.model.eval()
        t0 = time.perf_counter()
        try:
            scores = evaluate_members(
                forward, slots, self.prep.val, self.prep.val_gold, self.prep.labels,
                EvalSettings(self.device, self.amp, self.pad_id, cfg.eval_batch_tokens,
                             self.plan.multiple, cfg.seqeval_mode))
        finally:
            self.model.train()
        # the array's pass scores every member due at once: its latency is theirs
        self._health = eval_health(time.perf_counter() - t0, len(self.prep.val_gold), self.device)
        return dict(zip(slots, scores))

    def judge(self, slot: int, scores: dict[str, Any]) -> bool:
        """Take the member's evaluation: best weights, report to its pruner; True: stop early."""
        m = self.slots[slot]
        return judge(m.st, scores, m.job.cfg, self.metric, self.maximize, m.metrics, m.log,
                     m.job.reporter, lambda: trial_dir.save_best(
                         self.model.member_state_dict(slot), m.job.out_dir), self._health)

    def checkpoint(self, slot: int) -> None:
        """The member's checkpoint, in the solo format: a solo run or another array resumes it."""
        m = self.slots[slot]
        try:
            ckpt.write(trial_dir.checkpoints(m.job.out_dir),
                       weights=self.model.member_state_dict(slot),
                       optimizer=self.optimizer.member_state_dict(slot),
                       scaler={} if self.scaler is None else self.scaler.member_state_dict(slot),
                       state=asdict(m.st))
        except OSError as e:
            if e.errno == errno.ENOSPC:  # the previous checkpoint is still whole
                raise TrialStopped("disk_full", f"no space left writing a checkpoint: {e}") from e
            raise
