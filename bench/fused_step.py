"""Training tokens/s of K solo steps against one fused step of K members, on a CPU.

Fusing K trials into one model (hpsearch/trainer/fusion.py) only pays if a fused step costs no
more than the K solo steps it replaces. Both sides train the same scratch BERT on the same demo
batches with the loop's CPU recipe (CPU kernels, fused torch AdamW or FusedAdamW, gradient
clipping, dropout as configured), one thread. Members read the same batch each step, as trials
started together do; ``--offset`` gives each member another batch (other shapes, padded).

Solo and fused rounds alternate and each side's median step time is reported, so a load that
comes and goes on a shared machine hits both alike. Tokens are non-pad tokens.

    .venv/bin/python bench/fused_step.py                  # hidden 32, 1 layer
    .venv/bin/python bench/fused_step.py --size demo      # the demo study's 64 x 2 layers
    .venv/bin/python bench/fused_step.py --profile 4      # where a fused step of 4 goes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpsearch.config import ScratchModel, TrainerConfig  # noqa: E402
from hpsearch.demo_data import generate_demo_data  # noqa: E402
from hpsearch.trainer import prepare  # noqa: E402
from hpsearch.trainer.batching import collate, make_batches  # noqa: E402
from hpsearch.trainer.fusion import (  # noqa: E402
    FusedAdamW,
    FusedModel,
    clip_grad_norm_per_member,
    member_losses,
    stack_member_batches,
)
from hpsearch.trainer.kernels import use_cpu_kernels  # noqa: E402
from hpsearch.trainer.modeling import build_model  # noqa: E402
from hpsearch.trainer.optim import param_groups  # noqa: E402

SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, vocab_size=800),
    "demo": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=128),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--offset", action="store_true", help="each member reads another batch")
    ap.add_argument("--profile", type=int, default=0, help="profile a fused step of K")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fused-bench-") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    data_dir = Path(generate_demo_data(tmp / "data"))
    scratch = ScratchModel(**SIZES[args.size], hidden_dropout_prob=args.dropout,
                           attention_probs_dropout_prob=args.dropout)
    cfg = TrainerConfig(data_dir=str(data_dir), scratch=scratch, max_tokens=args.max_tokens,
                        precision="fp32", device="cpu", num_threads=1, progress=False, seed=0,
                        learning_rate=1e-3)
    prep = prepare(cfg, data_dir, tmp / "cache")
    pad = prep.tokenizer.pad_token_id
    order = [i for e in range(4) for i in make_batches(prep.train.lengths,
                                                      max_tokens=args.max_tokens, seed=0, epoch=e)]
    batches = [collate(prep.train, i, pad, multiple=1) for i in order]
    tokens = [int(b["attention_mask"].sum()) for b in batches]

    def model(seed: int):
        torch.manual_seed(seed)
        m = build_model(cfg, prep.tokenizer, prep.labels)
        use_cpu_kernels(m)
        return m.train()

    print(f"model {args.size} ({sum(p.numel() for p in model(0).parameters()):,} weights), "
          f"{len(batches)} batches of <= {args.max_tokens} tokens, dropout {args.dropout}, "
          f"1 thread, torch {torch.__version__}")
    for k in [int(x) for x in args.ks.split(",")]:
        bench_k(k, args, model, batches, tokens, pad)


def bench_k(k, args, model, batches, tokens, pad) -> None:
    members = [model(s) for s in range(k)]
    fused = FusedModel([model(s) for s in range(k)]).train()
    opts = [torch.optim.AdamW(param_groups(m, 0.01), lr=1e-3, fused=True) for m in members]
    fopt = FusedAdamW(fused, weight_decay=[0.01] * k, betas=(0.9, 0.999), eps=1e-8)
    lrs = [1e-3 * (1 + i) for i in range(k)]
    cursor = 0

    def picks() -> list[int]:
        nonlocal cursor
        cursor += 1
        return [(cursor + (i * 7 if args.offset else 0)) % len(batches) for i in range(k)]

    def solo_round() -> tuple[float, int]:
        t0, n = time.perf_counter(), 0
        for _ in range(args.steps):
            chosen = picks()
            for i, (m, opt) in enumerate(zip(members, opts)):
                for group in opt.param_groups:
                    group["lr"] = lrs[i]
                m(**batches[chosen[i]]).loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                n += tokens[chosen[i]]
        return time.perf_counter() - t0, n

    def fused_step() -> int:
        chosen = picks()
        b = stack_member_batches([batches[j] for j in chosen], pad)
        losses = member_losses(fused(b["input_ids"], b["attention_mask"]), b["labels"])
        losses.sum().backward()
        clip_grad_norm_per_member(fused, 1.0)
        fopt.step(lrs)
        fopt.zero_grad()
        return sum(tokens[j] for j in chosen)

    def fused_round() -> tuple[float, int]:
        t0, n = time.perf_counter(), 0
        for _ in range(args.steps):
            n += fused_step()
        return time.perf_counter() - t0, n

    solo_round()  # warm-up
    fused_round()
    solo_tps, fused_tps = [], []
    for r in range(args.rounds):  # both sides of a round train on the same batches
        cursor = r * args.steps
        t, n = solo_round()
        solo_tps.append(n / t)
        cursor = r * args.steps
        t, n = fused_round()
        fused_tps.append(n / t)
    s, f = statistics.median(solo_tps), statistics.median(fused_tps)
    print(f"K={k}: solo {s:,.0f} tok/s, fused {f:,.0f} tok/s, ratio {f / s:.2f}", flush=True)

    if args.profile == k:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                fused_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
