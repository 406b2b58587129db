"""Training throughput of the trial trainer against the HF ``Trainer``, in one process.

Both sides train the same model (one ``BertConfig``, the same initial weights) on the same
windows (hpsearch's tokenisation, so the same max length and the same tokens), with the same
number of sentences per step on average, the same optimiser settings, and mixed precision
where the device has it. The HF side uses the flags a careful user would: bf16, fused AdamW and
``train_sampling_strategy="group_by_length"``. Throughput counts non-pad tokens only and is
timed between two synchronised points after a few warm-up steps, so set-up, compilation and
the trainer's final evaluation are not in it.

    .venv/bin/python bench/throughput.py --device cpu     # small BERT, MSRA slice or demo data
    .venv/bin/python bench/throughput.py --device cuda    # bert-base, MSRA train, bf16, 32/step

On CUDA the trainer then trains one full epoch with and without its fast path (CUDA graphs),
both without dropout, and prints both validation F1s: speed must not change the maths. (With
dropout the two paths draw different masks, so their F1s differ as two seeds do.) The last
line is ``ratio=X``, our tokens/s over the HF Trainer's.

To compare single epochs by hand, or to see the seed-to-seed spread with dropout (one epoch
per ``path:seed``, no HF side):

    .venv/bin/python bench/throughput.py --device cuda --dropout 0 --f1-runs fast:0,plain:0
    .venv/bin/python bench/throughput.py --device cuda --f1-runs plain:1,plain:2
    .venv/bin/python bench/throughput.py --device cuda --f1-runs fast:0,fast:1,plain:0,plain:1

With several seeds per path it prints each path's mean F1 and their difference.

``--compile`` and ``--fast-path`` change how our side runs (on CPU neither is on by default:
compiling a small BERT with shapes that change every step was slower than eager here).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpsearch.config import ScratchModel, TrainerConfig  # noqa: E402
from hpsearch.trainer import prepare, train  # noqa: E402
from hpsearch.trainer.batching import make_batches  # noqa: E402
from hpsearch.trainer.modeling import build_model  # noqa: E402

MSRA = REPO.parent / "shared" / "data" / "msra"

#: Dense bf16 peak of the chips MFU is reported for (FLOP/s, no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "L4": 121e12, "A10G": 70e12}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Window:
    """Tokens, wall time and this process's CPU time between step ``start`` and step ``end``.

    On a shared machine the wall clock also measures the neighbours' load; the CPU time this
    process used (one thread) measures the trainer alone, so the CPU figures use it.
    """

    def __init__(self, device: torch.device, start: int, end: int):
        self.device, self.start, self.end = device, start, end
        self.at: dict[int, tuple[float, float, int]] = {}

    def mark(self, step: int, tokens: int) -> None:
        if step in (self.start, self.end):
            sync(self.device)
            self.at[step] = (time.perf_counter(), time.process_time(), tokens)

    def rate(self, cpu: bool = False) -> float:
        (w0, c0, n0), (w1, c1, n1) = self.at[self.start], self.at[self.end]
        return (n1 - n0) / max((c1 - c0) if cpu else (w1 - w0), 1e-9)

    @property
    def tokens_per_s(self) -> tuple[float, float]:
        """(per second of this process's CPU time, per wall-clock second)."""
        return self.rate(cpu=True), self.rate()


# ----------------------------------------------------------------------------- settings


def settings(args) -> tuple[TrainerConfig, Path]:
    """The trainer config both sides share, and the data folder."""
    drop = ({} if args.dropout is None else
            {"hidden_dropout_prob": args.dropout, "attention_probs_dropout_prob": args.dropout})
    if args.device == "cuda":
        data = Path(args.data or MSRA)
        scratch = ScratchModel(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, vocab_size=21128, **drop)
        limits: dict = {"val_limit": None}
        if args.quick:
            scratch = ScratchModel(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                   intermediate_size=1024, vocab_size=5000, **drop)
            limits = {"train_limit": 4000, "val_limit": 500}
        cfg = TrainerConfig(
            data_dir=str(data), scratch=scratch, max_length=256, batch_size=32,
            precision="bf16" if torch.cuda.is_bf16_supported() else "fp32", device="cuda",
            learning_rate=1e-4, max_epochs=1, seed=0, progress=False, **limits,
        )
        return cfg, data
    if args.data:
        data = Path(args.data)
    elif MSRA.is_dir():
        data = MSRA
    else:
        from hpsearch.demo_data import generate_demo_data

        data = Path(generate_demo_data(Path(tempfile.mkdtemp()) / "demo"))
    if args.quick:
        scratch = ScratchModel(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, vocab_size=800, **drop)
        limits = {"train_limit": 300, "val_limit": 50}
    elif args.size == "small":  # BERT-tiny's shape: 2 layers, 128 wide
        scratch = ScratchModel(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=512, vocab_size=3000, **drop)
        limits = {"train_limit": 4000, "val_limit": 100}
    else:  # the scratch model a study trains by default (2 layers, 64 wide)
        scratch = ScratchModel(vocab_size=3000, **drop)
        limits = {"train_limit": 4000, "val_limit": 100}
    cfg = TrainerConfig(
        data_dir=str(data), scratch=scratch, max_length=128, max_tokens=args.max_tokens,
        precision="fp32", device="cpu", num_threads=args.threads, learning_rate=1e-3,
        max_epochs=1, seed=0, progress=False, **limits,
    )
    return cfg, data


# ----------------------------------------------------------------------------- the two sides


def run_ours(cfg: TrainerConfig, prep, out: Path, warmup: int, steps: int | None):
    """Our trainer, the same function a trial runs; ``steps=None`` trains the whole epoch."""
    device = torch.device(cfg.device)
    n_batches = len(make_batches(prep.train.lengths, max_tokens=cfg.max_tokens,
                                 batch_size=cfg.batch_size, seed=cfg.seed or 0, epoch=0))
    total = n_batches if steps is None else warmup + steps
    # The last step is followed by the final evaluation: stop the clock one step before.
    win = Window(device, warmup, total - 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cfg = cfg.model_copy(update={"max_steps": total})
    r = train(cfg, prep, out, on_step=win.mark)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    for line in (out / "train.log").read_text().splitlines():  # how the steps ran
        if any(k in line for k in ("fast path", "captured", "compile failed")):
            print("    " + line.split(" ", 2)[2])
    return win.tokens_per_s, peak, r


def run_hf(cfg: TrainerConfig, prep, out: Path, batch_size: int, warmup: int,
           steps: int | None):
    """The HF Trainer with its best flags on the same windows and the same model."""
    from transformers import (
        DataCollatorForTokenClassification,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    device = torch.device(cfg.device)
    enc = prep.train
    features = [
        {"input_ids": enc.ids[a:b].tolist(), "labels": enc.labels[a:b].tolist()}
        for a, b in zip(enc.offsets[:-1], enc.offsets[1:])
    ]
    tokens: list[int] = []  # non-pad tokens of each batch, in the order the loader makes them
    pad8 = DataCollatorForTokenClassification(
        prep.tokenizer, pad_to_multiple_of=8 if device.type == "cuda" else None
    )

    def collator(batch):
        tokens.append(sum(len(f["input_ids"]) for f in batch))
        return pad8(batch)

    total = math.ceil(len(features) / batch_size) if steps is None else warmup + steps
    win = Window(device, warmup, total)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            win.mark(state.global_step, sum(tokens[: state.global_step]))

    torch.manual_seed(cfg.seed or 0)
    model = build_model(cfg, prep.tokenizer, prep.labels)
    bf16 = cfg.precision == "bf16"
    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=total,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        warmup_steps=math.ceil(cfg.warmup_ratio * total), lr_scheduler_type="linear",
        max_grad_norm=cfg.max_grad_norm, adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
        adam_epsilon=cfg.adam_epsilon, optim="adamw_torch_fused", bf16=bf16,
        train_sampling_strategy="group_by_length", logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        seed=cfg.seed or 0, use_cpu=device.type == "cpu",
    )
    trainer = Trainer(model=model, args=targs, train_dataset=features, data_collator=collator,
                      callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # its end-of-run dict would clutter the output
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.train()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return win.tokens_per_s, peak


def f1_runs(cfg: TrainerConfig, prep, work: Path, spec: str) -> None:
    """One epoch per ``path:seed`` in ``spec`` (path ``fast`` or ``plain``), no HF side.

    Speed must not change the maths. With dropout the two paths draw different masks (compiled
    kernels have their own random stream), so their F1s differ as two seeds do: ``plain:1``
    beside ``plain:0`` shows how much. With ``--dropout 0`` nothing is drawn, and the logged
    losses of the two paths at the same seed should follow each other step for step.
    """
    curves: dict[tuple[str, int], dict[int, float]] = {}
    f1: dict[tuple[str, int], float] = {}
    for item in spec.split(","):
        path, seed = item.split(":")
        if path not in ("fast", "plain"):
            sys.exit(f"--f1-runs: {item!r}: the path is fast or plain")
        key = (path, int(seed))
        run_cfg = cfg.model_copy(update={"fast_path": "on" if path == "fast" else "off",
                                         "seed": key[1]})
        out = work / f"f1-{path}-{seed}"
        tps, peak, res = run_ours(run_cfg, prep, out, 2, None)
        f1[key] = res.value
        curves[key] = {
            r["step"]: r["loss"]
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in r and not r.get("eval")
        }
        print(f"  {path:>5} seed {seed}: val F1 {res.value:.4f} after {res.steps} steps, "
              f"{tps[1]:,.0f} tokens/s, peak GPU memory {fmt_mem(peak)}", flush=True)
    for (path, seed), value in f1.items():
        other = ("plain", seed)
        if path == "fast" and other in f1:
            a, b = curves[(path, seed)], curves[other]
            steps = sorted(set(a) & set(b))
            diff = [abs(a[k] - b[k]) for k in steps]
            print(f"seed {seed}: fast path - plain = {100 * (value - f1[other]):+.2f} F1 points; "
                  f"logged train loss over {len(steps)} steps: max |difference| "
                  f"{max(diff):.4f}, mean {sum(diff) / len(diff):.4f}, last "
                  f"{a[steps[-1]]:.4f} vs {b[steps[-1]]:.4f}")
    means = {}
    for path in ("fast", "plain"):
        seeds = sorted(s for p, s in f1 if p == path)
        values = [f1[(path, s)] for s in seeds]
        if len(values) > 1:
            means[path] = sum(values) / len(values)
            print(f"{path} path over seeds {seeds}: mean F1 {means[path]:.4f}, spread "
                  f"{100 * (max(values) - min(values)):.2f} points")
    if len(means) == 2:
        print(f"mean F1, fast path - plain: {100 * (means['fast'] - means['plain']):+.2f} points")


# ----------------------------------------------------------------------------- reporting


def flops_per_token(cfg: TrainerConfig, n_labels: int, mean_len: float) -> float:
    """Training FLOPs per token: 6 x matmul weights, plus attention over the window (PaLM)."""
    s = cfg.scratch
    d, layers, ff = s.hidden_size, s.num_hidden_layers, s.intermediate_size
    weights = layers * (4 * d * d + 2 * d * ff) + d * n_labels
    return 6 * weights + 12 * layers * d * mean_len


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():
        if key in name:
            return value, name
    return None, name


#: Self-CPU time of torch ops, grouped by what the work is (``--profile``).
OP_GROUPS = {
    "dropout masks (bernoulli_)": ("aten::bernoulli_",),
    "matmuls (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention softmax and masks": ("aten::_softmax", "aten::_softmax_backward_data",
                                    "aten::all", "aten::isneginf", "aten::where",
                                    "aten::bitwise_and"),
    "elementwise (mul, div, add, gelu, copy, fill, sum)": (
        "aten::mul", "aten::div_", "aten::add", "aten::add_", "aten::gelu",
        "aten::gelu_backward", "aten::copy_", "aten::fill_", "aten::sum", "aten::mul_"),
    "layer norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "embeddings and loss": ("aten::embedding_dense_backward", "aten::index_select",
                            "aten::_log_softmax", "aten::_log_softmax_backward_data",
                            "aten::nll_loss_forward", "aten::nll_loss_backward"),
    "optimizer and grad clipping": ("aten::_fused_adamw_", "Optimizer.step#AdamW.step",
                                    "aten::linalg_vector_norm", "aten::_foreach_norm"),
}


def profiled(fn):
    """Run ``fn`` under torch.profiler; return its result and self-CPU seconds per op name."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    return result, {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}


def print_profile(ours: dict[str, float], hf: dict[str, float]) -> None:
    """Where one epoch's op time goes on each side: shared kernels against the rest."""
    print(f"{'self CPU seconds of torch ops, one epoch':<52}{'ours':>8}{'HF':>8}")
    seen: set[str] = set()
    rows = list(OP_GROUPS.items())
    rows.append(("HF data loader", tuple(k for k in hf if k.startswith("enumerate(DataLoader)"))))
    for name, keys in rows:
        seen.update(keys)
        print(f"  {name:<50}{sum(ours.get(k, 0) for k in keys):8.3f}"
              f"{sum(hf.get(k, 0) for k in keys):8.3f}")
    rest = [sum(v for k, v in side.items() if k not in seen) for side in (ours, hf)]
    print(f"  {'other ops (views, allocations, autograd nodes)':<50}{rest[0]:8.3f}{rest[1]:8.3f}")
    print(f"  {'total':<50}{sum(ours.values()):8.3f}{sum(hf.values()):8.3f}")


def fmt_mem(peak: int | None) -> str:
    return "n/a (cpu)" if peak is None else f"{peak / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="a tiny run that checks the bench works")
    ap.add_argument("--size", choices=["tiny", "small"], default="tiny",
                    help="cpu: the default scratch BERT (64 wide) or BERT-tiny's shape (128)")
    ap.add_argument("--data", help="a data folder (default: MSRA when present)")
    ap.add_argument("--steps", type=int,
                    help="timed steps (default: the rest of one epoch, so both sides see the "
                    "same sentences)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--repeats", type=int, help="runs of each side, interleaved; best counts")
    ap.add_argument("--max-tokens", type=int, default=2048, help="our token budget on CPU")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (1: CPU time then measures the trainer alone)")
    ap.add_argument("--no-f1", action="store_true", help="cuda: skip the un-graphed epoch")
    ap.add_argument("--compile", action="store_true", help="ours: torch.compile the model")
    ap.add_argument("--fast-path", choices=["auto", "on", "off"], help="ours: the fast path")
    ap.add_argument("--dropout", type=float,
                    help="hidden and attention dropout of the model (default 0.1)")
    ap.add_argument("--f1-runs", metavar="PATH:SEED,...",
                    help="only train one epoch per item (fast:0,plain:0,plain:1) and compare "
                    "F1 and loss curves; no HF side, no ratio")
    ap.add_argument("--profile", action="store_true",
                    help="run each side once under torch.profiler and print where the op "
                    "time goes (slower; the rates then include the profiler)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        sys.exit(2)
    cuda = args.device == "cuda"
    steps, warmup = args.steps, args.warmup
    repeats = 1 if args.profile else args.repeats or (1 if args.quick or cuda else 2)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    cfg, data = settings(args)
    work = Path(tempfile.mkdtemp(prefix="hpsearch-bench-"))
    t0 = time.perf_counter()
    prep = prepare(cfg, data, work / "cache")
    device = torch.device(args.device)
    # Our steps on the fast path cut the same batches (fixed rows) or bucket-aware ones.
    plan = make_batches(prep.train.lengths, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size,
                        seed=0, epoch=0)
    per_step = float(np.mean([len(b) for b in plan]))
    hf_batch = cfg.batch_size or max(1, round(per_step))
    mean_len = float(prep.train.lengths.mean())
    print(f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
          f"device {args.device}" + (f" ({torch.cuda.get_device_name(device)})" if cuda else
                                     f" ({args.threads} threads)"))
    s = cfg.scratch
    print(f"data {data} ({len(prep.train)} windows, mean {mean_len:.1f} tokens, max_length "
          f"{cfg.max_length}), prepared in {time.perf_counter() - t0:.1f}s")
    print(f"model BERT {s.num_hidden_layers} layers x {s.hidden_size} ({s.num_attention_heads} "
          f"heads, ffn {s.intermediate_size}, vocab {len(prep.tokenizer)}), precision "
          f"{cfg.precision}")
    print(f"sentences per step: ours {per_step:.1f} on average "
          f"({'fixed' if cfg.batch_size else f'budget {cfg.max_tokens} tokens'}), "
          f"HF Trainer {hf_batch}; timed {steps or 'all'} steps after {warmup}")

    if args.f1_runs:
        f1_runs(cfg, prep, work, args.f1_runs)
        return
    ours_cfg = cfg.model_copy(update={"fast_path": args.fast_path or ("on" if cuda else "auto"),
                                      "compile": args.compile})
    # A GPU is timed by the wall clock; a CPU by the CPU time this process used (see Window).
    clock = "wall-clock" if cuda else "CPU-time"
    pick = 1 if cuda else 0
    ours, hf = [], []
    ours_peak = hf_peak = None
    ops: dict[str, dict[str, float]] = {}
    for r in range(repeats):
        order = ("hf", "ours") if r % 2 == 0 else ("ours", "hf")
        for side in order:
            out = work / f"{side}-{r}"
            go = (partial(run_ours, ours_cfg, prep, out, warmup, steps) if side == "ours"
                  else partial(run_hf, cfg, prep, out, hf_batch, warmup, steps))
            if args.profile:
                got, ops[side] = profiled(go)
            else:
                got = go()
            if side == "ours":
                tps, ours_peak, result = got
                ours.append(tps[pick])
                f1_on = result.value
            else:
                tps, hf_peak = got
                hf.append(tps[pick])
            print(f"  run {r + 1} {side:>4}: {tps[1]:>10,.0f} tokens/s wall-clock, "
                  f"{tps[0]:>10,.0f} tokens/s of CPU time", flush=True)
    best_ours, best_hf = max(ours), max(hf)
    ratio = best_ours / best_hf
    print(f"ours (hpsearch trainer{', fast path' if cuda else ''}): {best_ours:,.0f} tokens/s "
          f"({clock}, best of {len(ours)}), peak GPU memory {fmt_mem(ours_peak)}")
    print(f"HF Trainer (group_by_length, fused AdamW{', bf16' if cfg.precision == 'bf16' else ''})"
          f": {best_hf:,.0f} tokens/s ({clock}, best of {len(hf)}), peak GPU memory "
          f"{fmt_mem(hf_peak)}")
    if cuda:
        peak, name = peak_flops(device)
        fpt = flops_per_token(cfg, len(prep.labels), mean_len)
        if peak is None:
            print(f"MFU: n/a (no bf16 peak known for {name})")
        else:
            mfu = [100 * fpt * x / peak for x in (best_ours, best_hf)]
            print(f"MFU ({name}, {peak / 1e12:.0f} TFLOP/s bf16): ours {mfu[0]:.2f}%, "
                  f"HF Trainer {mfu[1]:.2f}%")
    else:
        print("MFU: n/a (cpu)")
    if cuda and not args.no_f1 and steps is None:
        # Speed must not change the maths. With dropout the two paths draw different masks
        # (compiled kernels have their own random stream) and their F1s differ as two seeds
        # do, so the check trains both without dropout: no draws left to differ.
        print(f"val F1 of the timed epoch: fast path {f1_on:.4f} (dropout as configured)")
        print("F1 check: one epoch with the fast path and one without, no dropout")
        still = cfg.scratch.model_copy(update={"hidden_dropout_prob": 0.0,
                                               "attention_probs_dropout_prob": 0.0})
        f1_runs(cfg.model_copy(update={"scratch": still}), prep, work, "fast:0,plain:0")
    if ops:
        print_profile(ops["ours"], ops["hf"])
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
