"""One trial's training run, readable top to bottom.

The loop reports the validation metric after every evaluation to a *reporter* (an Optuna
trial, or nothing when run by hand), so a pruner can stop it, and checkpoints often enough that
a killed trial loses at most one checkpoint interval. Everything that decides what the next
batch is (epoch, position in the epoch, RNG states) is in the checkpoint, so a resumed run
computes exactly what the uninterrupted run would have.

With ``devices_per_trial: N`` the same loop runs in N processes (started by ranks.py; what
they share, in distributed.py): each step's batch is split across them and their gradients
summed, rank 0 evaluates on everyone's predictions, decides, and alone writes; the others
follow its decisions step for step.

``train`` is the loop; ``_Training`` holds what it works with, set up once, and its methods are
the stages: resume, step, evaluate (and maybe prune), checkpoint. What the run carries from
step to step and the ways it ends (result, stopped, pruned, interrupted) are in state.py, which
the fused loop shares.

A step is one optimizer update on one batch. With ``gradient_accumulation_steps: A`` the batch
(cut for the whole ``max_tokens``/``batch_size`` budget) goes through the model as up to A
micro-batches, each loss weighted by its share of the batch's labelled tokens, so the summed
gradient is the whole batch's; clipping, the schedule and every count of steps are per update,
and checkpoints fall between updates.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from hpsearch.config import TrainerConfig
from hpsearch.config.trainer import RUN_ONLY
from hpsearch.trainer import checkpoint as ckpt
from hpsearch.trainer import distributed, ranks, trial_dir
from hpsearch.trainer.batching import bucket_of, labelled_counts, make_batches, micro_batches
from hpsearch.trainer.evaluation import evaluate
from hpsearch.trainer.fastpath import FellBack, Runner, make_plan, plan_batch
from hpsearch.trainer.features import IGNORE
from hpsearch.trainer.inputs import Prepared
from hpsearch.trainer.kernels import use_cpu_kernels
from hpsearch.trainer.modeling import build_model, checkpoint_layers
from hpsearch.trainer.monitor import Monitor, StepRow, eval_health, steps_rows
from hpsearch.trainer.optim import lr_at, make_optimizer, total_steps, warmup_steps
from hpsearch.trainer.runtime import (
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
    told_the_others,
)


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
    group: distributed.Group | None = None,
) -> TrialResult:
    """Train one trial. ``on_step(step, train_tokens)`` runs after every optimizer step.

    With ``devices_per_trial: N`` this process becomes rank 0 of N and starts the others;
    they call ``train`` with their ``group``, and write and report nothing.
    """
    from tqdm.auto import tqdm

    t_enter = time.perf_counter()
    own_group = group is None and cfg.devices_per_trial > 1
    if group is None or group.leads:
        out_dir.mkdir(parents=True, exist_ok=True)
        log, handler = trial_logger(out_dir)
    else:
        log, handler = ranks.quiet_logger(), None
    try:
        if own_group:
            group = ranks.start(cfg, prep, out_dir, log, metric, maximize)
        run = _Training(cfg, prep, out_dir, log, metric, maximize, group)
        resumed_from = run.resume(resume_from, reporter)
        st = run.st
        bar = tqdm(total=run.total, initial=st.step, desc=out_dir.name, leave=False,
                   disable=None if cfg.progress and run.writes else True, dynamic_ncols=True)
        try:
            # ---- compile and capture every bucket's shape before the first step
            run.model.train()
            t_start = time.perf_counter() - st.train_seconds
            if run.plan.graphs:
                bar.set_postfix_str("compiling and capturing one CUDA graph per bucket")
            run.runner.capture(run.micro_batches(min(st.epoch, len(run.epochs) - 1)),
                               run.width_of, run.make_batch, run.optimizer)
            window = [0, time.perf_counter()]  # tokens and start of the throughput window
            while st.step < run.total:
                # ---- set the learning rate; forward, backward, clip, update
                lr, n_tokens = run.step()
                if run.first_step_at is None:
                    run.started(time.perf_counter() - t_enter)
                window[0] += n_tokens
                epoch_done = st.batch == 0
                bar.update(1)
                if on_step is not None:
                    on_step(st.step, st.train_tokens)

                # ---- what this step owes: an evaluation, a checkpoint, a loss check, a log line
                last = st.step == run.total
                due_eval = (st.step % cfg.eval_every == 0 if cfg.eval_every else epoch_done) \
                    or last
                due_ckpt = not last and (
                    due_eval or bool(cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0))
                sync = due_eval or due_ckpt or last or st.step % run.sync_every == 0
                if sync:
                    run.flush(window, bar)  # the steps' rows, read off the device at once
                    run.check_finite(lr)

                # ---- evaluate, report to the pruner (which may stop us), stop early
                if due_eval and run.evaluate(reporter):
                    break
                st.train_seconds = time.perf_counter() - t_start

                # ---- checkpoint; a requested stop checkpoints and leaves
                if due_ckpt:
                    run.checkpoint()
                if run.stop_requested(should_stop, sync):
                    run.flush(window, bar)
                    run.check_finite(lr)
                    run.checkpoint()
                    log.info("stop requested; checkpoint written at step %d", st.step)
                    raise Interrupted(f"stopped at step {st.step}")
        finally:
            bar.close()
        st.train_seconds = time.perf_counter() - t_start
        return run.result(resumed_from)
    finally:
        if own_group and group is not None:  # the other ranks end with us, however we leave
            group.close(wait=told_the_others(sys.exc_info()[1]))
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


class _Training:
    """One trial's model, optimizer, batches and state, set up once; methods are the stages."""

    def __init__(self, cfg: TrainerConfig, prep: Prepared, out_dir: Path,
                 log: logging.Logger, metric: str, maximize: bool,
                 group: distributed.Group | None = None):
        self.cfg, self.prep, self.out_dir, self.log = cfg, prep, out_dir, log
        self.metric, self.maximize = metric, maximize
        # One of several ranks: only rank 0 writes, judges and reports (distributed.py).
        self.group, self.writes = group, group is None or group.leads
        seed = cfg.seed or 0
        seed_everything(seed)
        if group is not None:
            distributed.seed_rank(seed, group, 0)
        threads = cfg.num_threads or (group.threads if group else None)
        if threads:
            torch.set_num_threads(threads)
        ranks.computing()
        self.device = device = group.device if group else resolve_device(cfg.device)
        self.amp = amp = resolve_precision(cfg.precision, device)
        if amp is not None and device.type == "cpu" and amp == torch.float16:
            raise TrialStopped("config", "precision fp16 needs a CUDA device")
        self.plan = plan = make_plan(cfg, device)
        if group and plan.graphs:  # the same buckets and batches, without captured graphs
            plan.graphs, plan.compiled = False, cfg.compile
            plan.why += f"; no CUDA graphs on {group.world} devices"
        log.info("params %s", json.dumps(cfg.model_dump(mode="json")))
        log.info("device %s, autocast %s, %s%s", device, amp, plan.why,
                 ", torch.compile" if plan.compiled and not plan.graphs else "")
        self.data_seconds, data_source = prep.cost()
        log.info("data %.2fs (%s)", self.data_seconds, data_source)

        # ---- model, optimizer, and how it is run
        self.model = build_model(cfg, prep.tokenizer, prep.labels, log=log).to(device)
        if cfg.gradient_checkpointing:
            checkpoint_layers(self.model)
            log.info("gradient checkpointing: layer activations recomputed in the backward")
        self.accumulation = cfg.gradient_accumulation_steps
        # A rank's micro-batch holds a share of a global batch: the fast path pads it to that.
        self.batch_cfg = cfg if group is None else cfg.model_copy(
            update={"gradient_accumulation_steps": self.accumulation * group.world})
        if self.accumulation > 1:
            log.info("gradient accumulation: each update's batch in up to %d micro-batches",
                     self.accumulation)
        if plan.cpu_kernels:
            log.info("CPU kernels: %s", use_cpu_kernels(self.model))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        self.runner = Runner(self.model, plan, device, amp, self.scaler, log)
        self.pad_id = prep.tokenizer.pad_token_id or 0

        # ---- every epoch's batches, decided by the seed alone (the same on every rank)
        self.lengths = prep.train.lengths
        self.labelled = labelled_counts(prep.train) if group else None
        self.epochs = [
            make_batches(self.lengths, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size,
                         seed=seed, epoch=e, widths=plan.widths)
            for e in range(cfg.max_epochs)
        ]
        self.total = total_steps(cfg, [len(b) for b in self.epochs])
        self.warmup = warmup_steps(cfg, self.total)
        self.sync_every = plan.sync_every or max(1, self.total // 100)
        self.monitor = Monitor(self.model, cfg.monitor_every)
        self.pending: list[StepRow] = []  # steps taken, not yet read off the device

        self.st = TrainState(
            config=cfg.model_dump(mode="json", exclude=set(RUN_ONLY)),
            widths=list(plan.widths) if plan.widths and cfg.batch_size is None else None,
        )
        self.ckpt_root = trial_dir.checkpoints(out_dir)
        self.metrics = trial_dir.MetricsLog(out_dir)
        # A bad loss is flagged on the device and read every `sync_every` steps: reading it
        # every step would make the CPU wait for the GPU each time.
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.checked = 0
        self.startup_seconds: float | None = None
        self.first_step_at: float | None = None

    def started(self, seconds: float) -> None:
        """The first step is done: what it took to get here (data, model, compile) is logged."""
        self.startup_seconds, self.first_step_at = seconds, time.time()
        self.log.info("first step done %.1fs after the trial started", seconds)

    # ----------------------------------------------------------------------------- batches

    def width_of(self, idx: np.ndarray) -> int:
        return bucket_of(int(self.lengths[idx].max()), self.plan.widths)

    def make_batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return plan_batch(self.plan, self.prep.train, idx, self.pad_id, self.batch_cfg)

    def parts(self, idx: np.ndarray) -> list[np.ndarray]:
        """This process's forward passes of a batch: its rank's share, split for accumulation."""
        if self.group is None:
            return micro_batches(idx, self.accumulation)
        share = self.group.share(idx)
        return [p for p in micro_batches(share, self.accumulation) if len(p)]

    def micro_batches(self, epoch: int) -> list[np.ndarray]:
        """Every forward pass of an epoch: its batches, each split for accumulation."""
        return [m for idx in self.epochs[epoch] for m in self.parts(idx)]

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type != "cuda":
            return batch
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}

    # ----------------------------------------------------------------------------- stages

    def resume(self, resume_from: Path | None, reporter: Reporter | None) -> int | None:
        """Load the newest good checkpoint (a predecessor's, else our own); its step or None.

        Several ranks: rank 0 chooses, every rank reads the same checkpoint, and rank 0's
        weights are then everyone's (they start equal even without one).
        """
        found = find_checkpoint(resume_from, self.ckpt_root, self.st) if self.writes else None
        if self.group is not None:
            path = self.group.broadcast(None if found is None else str(found.path))
            if found is None and path is not None:
                found = ckpt.Checkpoint(Path(path), ckpt.verify(Path(path)))
        if found is not None:
            ckpt.restore(found, model=self.model, optimizer=self.optimizer, scaler=self.scaler)
            if self.writes:
                take_over(self.st, found, self.metrics, self.log, reporter)
            else:
                self.st.load(found.state)
                distributed.set_rng_state(self.st.rank_rng, self.group, self.device,
                                          self.cfg.seed or 0, self.st.step)
            self.checked = self.st.step
        if self.group is not None:
            self.group.sync_weights(self.model)
        if found is None:
            return None
        if found.path.parent != self.ckpt_root:  # adopt the old trial's checkpoint as our own
            self.checkpoint()
            if self.writes:
                trial_dir.adopt_best(found.path.parent.parent, self.out_dir)
        return self.st.step

    def step(self) -> tuple[float, int]:
        """One optimizer step on the next batch; moves the position on."""
        st, cfg = self.st, self.cfg
        idx = self.epochs[st.epoch][st.batch]
        n_tokens = int(self.lengths[idx].sum())
        lr = lr_at(st.step, cfg, self.total, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        monitored = self.writes and self.monitor.due(st.step + 1)
        # Hooks only on an eager forward: a compiled one would recompile for them.
        watch = monitored and self.runner.net is self.model and bool(self.monitor.layers)
        parts = self.parts(idx)
        # Several ranks: each weighs its share by the labelled tokens of the whole batch.
        total = int(self.labelled[idx].sum()) if self.group else None
        try:
            loss = self.forward_backward(parts, watch, total)
        except FellBack:  # the plain model took over: this update again, from its start
            loss = self.forward_backward(parts, watch, total)
        if self.group is not None:  # the whole batch's gradient and loss on every rank
            loss = self.group.reduce_gradients(self.params, loss)
        self.nonfinite.logical_or_(~torch.isfinite(loss))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norms = self.monitor.grad_norms() if monitored else None
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                     if cfg.max_grad_norm else None)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        self.pending.append(StepRow([st.step], [st.epoch], [lr], loss.detach(), grad_norm,
                                    norms, self.monitor.take_activations() if watch else None))
        st.batch += 1
        st.train_tokens += n_tokens
        if st.batch == len(self.epochs[st.epoch]):
            st.epoch += 1
            st.batch = 0
        return lr, n_tokens

    def forward_backward(self, parts: list[np.ndarray], watch: bool,
                         total: int | None = None) -> torch.Tensor:
        """The gradient of the update's whole batch, in ``.grad``; its loss (detached).

        One part: the batch as it is. Several: each micro-batch's mean loss is weighted by its
        share of the labelled tokens, so the gradients add up to those of the mean over all of
        them, as one batch of those sentences would give; a micro-batch with no labelled token
        adds nothing and is skipped (its mean would be 0/0). The monitor watches the first
        micro-batch's forward. ``total``: the labelled tokens of the global batch, of which
        ``parts`` are one rank's share (the other ranks' gradients are added afterwards); a
        rank may have no part at all, and then a zero loss and no gradient.
        """
        batches = [self.make_batch(p) for p in parts]
        weights: list[float | None] = [None]
        if len(batches) > 1 or total is not None:
            counts = [int((b["labels"] != IGNORE).sum()) for b in batches]
            total = sum(counts) if total is None else total
            if total:  # else every part is 0/0, as the whole batch would be: NaN is flagged
                batches = [b for b, c in zip(batches, counts) if c]
                counts = [c for c in counts if c]
            weights = [c / max(total, 1) for c in counts]
        loss = None
        for i, (batch, weight) in enumerate(zip(batches, weights)):
            if i:
                self.runner.set_aside()
            batch = self.to_device(batch)
            ctx = self.monitor.watching(batch["attention_mask"]) if watch and not i else None
            part = self.runner.forward_backward(batch, self.optimizer, weight, ctx).detach()
            part = part if weight is None else part * weight
            loss = part if loss is None else loss + part
        self.runner.gather()
        return loss if loss is not None else torch.zeros((), device=self.device)

    def check_finite(self, lr: float) -> None:
        st = self.st
        if bool(self.nonfinite):
            where = (f"at step {st.step}" if self.checked + 1 == st.step
                     else f"between steps {self.checked + 1} and {st.step}")
            raise TrialStopped("nan_loss", f"loss is not finite {where} (lr {lr:.3g})")
        self.checked = st.step

    def flush(self, window: list, bar) -> None:
        """Every step since the last flush as a metrics row: loss and lr always, the gradient
        norm where clipping computed it, the monitor's figures on its steps, the throughput
        of the window on the last row. One read off the device for all of them."""
        if not self.pending or not self.writes:
            self.pending = []
            return
        rows = steps_rows(self.pending, self.monitor)[0]
        self.pending = []
        now = time.perf_counter()
        tps = window[0] / max(now - window[1], 1e-9)
        window[:] = [0, now]
        rows[-1]["tokens_per_s"] = tps
        bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", tok_s=f"{tps:,.0f}")
        self.metrics.write_rows(rows)

    def evaluate(self, reporter: Reporter | None) -> bool:
        """Score on validation, keep the best weights, report; True to stop early.

        Several ranks: each scores its share of the batches, rank 0 judges and tells the
        others what follows (go on, stop early, pruned), so all stop at the same step.
        """
        cfg, prep, group = self.cfg, self.prep, self.group
        t0 = time.perf_counter()
        scores = evaluate(self.model, prep.val, prep.val_gold, prep.labels, device=self.device,
                          amp=self.amp, pad_id=self.pad_id, max_tokens=cfg.eval_batch_tokens,
                          multiple=self.plan.multiple, mode=cfg.seqeval_mode, shard=group)
        if not self.writes:
            code, value = group.decide()
            if code == distributed.PRUNED:
                raise TrialPrunedAt(value, self.st.step)
            return code == distributed.EARLY_STOP
        health = eval_health(time.perf_counter() - t0, len(prep.val_gold), self.device)
        try:
            stop = judge(self.st, scores, cfg, self.metric, self.maximize, self.metrics,
                         self.log, reporter, lambda: trial_dir.save_best(self.model.state_dict(),
                                                                         self.out_dir), health)
        except TrialPrunedAt as e:
            if group is not None:
                group.decide(distributed.PRUNED, e.value)
            raise
        if group is not None:
            group.decide(distributed.EARLY_STOP if stop else distributed.GO)
        return stop

    def stop_requested(self, should_stop: Callable[[], bool], sync: bool) -> bool:
        """Whether to checkpoint and leave now. Several ranks: rank 0's request, heard by
        all at the next sync point (one tiny broadcast there, none in between)."""
        if self.group is None:
            return should_stop()
        return sync and self.group.agree(self.writes and should_stop())

    def checkpoint(self) -> None:
        """Rank 0 writes; several ranks first send it their RNG states (every rank calls)."""
        states = self.group.gather(distributed.rng_state(self.device)) if self.group else None
        if not self.writes:
            return
        self.st.rank_rng = states
        try:
            ckpt.save(self.ckpt_root, model=self.model, optimizer=self.optimizer,
                      scaler=self.scaler, state=asdict(self.st))
        except OSError as e:
            if e.errno == errno.ENOSPC:  # the previous checkpoint is still whole
                raise TrialStopped("disk_full", f"no space left writing a checkpoint: {e}") from e
            raise

    def result(self, resumed_from: int | None) -> TrialResult:
        st = self.st
        self.log.info("done: best %s %.4f at step %d (%d tokens, %.0f tokens/s)", self.metric,
                      st.best, st.best_step, st.train_tokens,
                      st.train_tokens / max(st.train_seconds, 1e-9))
        return TrialResult(
            value=float("nan") if st.best is None else float(st.best),  # rank 0 alone judges
            best_step=st.best_step,
            best_scores=st.best_scores,
            steps=st.step,
            train_tokens=st.train_tokens,
            train_seconds=st.train_seconds,
            tokens_per_second=st.train_tokens / max(st.train_seconds, 1e-9),
            data_seconds=self.data_seconds,
            resumed_from_step=resumed_from,
            history=st.history,
            startup_seconds=self.startup_seconds,
            first_step_at=self.first_step_at,
        )
