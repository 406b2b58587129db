"""AdamW for a fused array: each member's own settings, step count and solo state dict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from hpsearch.trainer.fusion.model import FusedModel, lead


def _solo_group_template() -> list[dict[str, Any]]:
    """The param_groups torch's AdamW(fused=True) writes, defaults and key order included."""
    a, b = torch.zeros(1, 1), torch.zeros(1)
    opt = torch.optim.AdamW([{"params": [a], "weight_decay": 0.0},
                             {"params": [b], "weight_decay": 0.0}], fused=True)
    return opt.state_dict()["param_groups"]


class FusedAdamW:
    """AdamW with its own lr, weight decay, betas, eps and step count per member.

    torch's AdamW maths: decoupled decay ``p *= 1 - lr * wd``, bias corrections from each
    member's own step count, ``denom = sqrt(v) / sqrt(1 - beta2^t) + eps``. As in the solo
    loop's ``param_groups``, weights that are 1-D in the solo model (biases, LayerNorm) are not
    decayed. Master weights stay fp32.

    Two ways to run it, same numbers. ``fused=True`` (the default where torch has a fused
    AdamW kernel for the device: CPU and CUDA) calls that kernel once per member and group on
    the member's slices of the stacked tensors: one pass over memory, the solo optimizer's own
    arithmetic, 2K calls a step. ``fused=False`` updates every stacked tensor for all members
    at once, the per-member numbers broadcast over the trial axis: ten element-wise passes per
    tensor, which on a CPU made the optimizer 2-6x slower than the kernel calls (K = 1-8).
    """

    def __init__(self, model: FusedModel, *, weight_decay: Any, betas: Any, eps: Any,
                 lr: Any = 1e-3, fused: bool | None = None):
        self.model = model
        self.k = k = model.k
        named = [(n, p) for n, p in model.member_parameters() if p.requires_grad]
        if not named:
            raise ValueError("FusedAdamW: the fused model has no trainable parameters")
        self.params = [p for _, p in named]
        self.decays = [model.solo_ndim(n) >= 2 for n, _ in named]
        # The solo optimizer numbers its parameters group by group: decayed ones first.
        self.solo_order = ([i for i, d in enumerate(self.decays) if d]
                           + [i for i, d in enumerate(self.decays) if not d])
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                        for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                           for p in self.params]
        self.steps = [0] * k
        self.weight_decay = self._floats(weight_decay, "weight_decay")
        self.eps = self._floats(eps, "eps")
        if isinstance(betas, tuple) and len(betas) == 2 and not isinstance(betas[0], tuple):
            betas = [betas] * k
        betas = list(betas)
        if len(betas) != k:
            raise ValueError(f"{len(betas)} betas given for {k} members")
        self.betas = [(float(b1), float(b2)) for b1, b2 in betas]
        self.lr = self._floats(lr, "lr")
        self._groups = _solo_group_template()
        device = self.params[0].device
        if fused is None:
            fused = (hasattr(torch, "_fused_adamw_") and device.type in ("cpu", "cuda")
                     and all(p.is_contiguous() for p in self.params))
        self.fused = fused
        # Member k's slices of every stacked tensor, as the kernel takes them: views, which
        # stay valid because weights and moments are only ever updated in place.
        self._slices = [
            [list(col) for col in zip(*(t.detach().unbind(0) for t in tensors))]
            for tensors in (self.params, self.exp_avg, self.exp_avg_sq)
        ]
        self._step_t = [torch.zeros((), dtype=torch.float32, device=device) for _ in range(k)]
        self._groups_of = [[i for i, d in enumerate(self.decays) if d],
                           [i for i, d in enumerate(self.decays) if not d]]

    def _floats(self, values: Any, what: str) -> list[float]:
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        if not isinstance(values, (list, tuple)):
            values = [values] * self.k
        if len(values) != self.k:
            raise ValueError(f"{len(values)} values of {what} given for {self.k} members")
        return [float(v) for v in values]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: Any, active: torch.Tensor | Sequence[bool] | None = None) -> None:
        """One update of every active member with its learning rate ``lr[k]``.

        An inactive member (a finished or diverged trial, an idle slot) is not touched: its
        weights, moments and step count stay as they were.
        """
        lrs = self._floats(lr, "lr")
        if active is None:
            on = list(range(self.k))
        else:
            flags = active.tolist() if isinstance(active, torch.Tensor) else list(active)
            if len(flags) != self.k:
                raise ValueError(f"{len(flags)} active flags for {self.k} members")
            on = [i for i, a in enumerate(flags) if a]
        if not on:
            return
        for i in on:
            self.steps[i] += 1
            self.lr[i] = lrs[i]
        if self.fused:
            self._step_fused(on)
        else:
            self._step_vectorised(on)

    def _step_fused(self, on: list[int]) -> None:
        have = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = {i: self.params[i].grad.contiguous().unbind(0) for i in have}
        params, exp_avg, exp_avg_sq = self._slices
        for k in on:
            self._step_t[k].fill_(self.steps[k])
            b1, b2 = self.betas[k]
            for group, wd in zip(self._groups_of, (self.weight_decay[k], 0.0)):
                ids = [i for i in group if i in grads]
                if not ids:
                    continue
                torch._fused_adamw_(
                    [params[k][i] for i in ids], [grads[i][k] for i in ids],
                    [exp_avg[k][i] for i in ids], [exp_avg_sq[k][i] for i in ids], [],
                    [self._step_t[k]] * len(ids), lr=self.lr[k], beta1=b1, beta2=b2,
                    weight_decay=wd, eps=self.eps[k], amsgrad=False, maximize=False)

    def _step_vectorised(self, on: list[int]) -> None:
        device = self.params[0].device
        dtype = self.params[0].dtype
        cols: dict[str, list[float]] = {n: [] for n in
                                        ("keep", "c1", "b2", "c2", "bc2", "eps", "size")}
        for i in on:
            b1, b2 = self.betas[i]
            t = self.steps[i]
            lr = self.lr[i]
            # in double precision, then float32 in the update, as torch's fused kernel does
            cols["keep"].append(1 - lr * self.weight_decay[i])
            cols["c1"].append(1 - b1)
            cols["b2"].append(b2)
            cols["c2"].append(1 - b2)
            cols["bc2"].append(math.sqrt(1 - b2**t))
            cols["eps"].append(self.eps[i])
            cols["size"].append(-lr / (1 - b1**t))
        s = {n: torch.tensor(v, dtype=dtype, device=device) for n, v in cols.items()}
        index = None if len(on) == self.k else torch.tensor(on, device=device)
        for p, m, v, decays in zip(self.params, self.exp_avg, self.exp_avg_sq, self.decays):
            if p.grad is None:
                continue
            g = p.grad
            if index is None:
                _adamw(p, g, m, v, s, decays)
            else:
                ps, ms, vs = (t.index_select(0, index) for t in (p, m, v))
                _adamw(ps, g.index_select(0, index), ms, vs, s, decays)
                p.index_copy_(0, index, ps)
                m.index_copy_(0, index, ms)
                v.index_copy_(0, index, vs)

    # --------------------------------------------------------------------- solo state dicts

    def member_state_dict(self, k: int) -> dict[str, Any]:
        """What the solo loop's torch AdamW ``state_dict()`` would hold for member k.

        Tensors are copies: a solo optimizer that loads them keeps them as its own state and
        must not update ours in place.
        """
        self.model.check_member(k)
        state: dict[int, dict[str, torch.Tensor]] = {}
        if self.steps[k] > 0:
            for solo_index, i in enumerate(self.solo_order):
                p = self.params[i]
                state[solo_index] = {
                    "step": torch.tensor(float(self.steps[k]), dtype=torch.float32,
                                         device=p.device),
                    "exp_avg": self.exp_avg[i][k].clone(),
                    "exp_avg_sq": self.exp_avg_sq[i][k].clone(),
                }
        n_decay = sum(self.decays)
        groups = []
        for g, (wd, ids) in enumerate([
            (self.weight_decay[k], list(range(n_decay))),
            (0.0, list(range(n_decay, len(self.params)))),
        ]):
            group = {key: val for key, val in self._groups[g].items() if key != "params"}
            group.update(weight_decay=wd, lr=self.lr[k], betas=self.betas[k], eps=self.eps[k])
            group["params"] = ids
            groups.append(group)
        return {"state": state, "param_groups": groups}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, sd: dict[str, Any]) -> None:
        """Member k continues from a solo AdamW ``state_dict()`` (a solo checkpoint's)."""
        self.model.check_member(k)
        groups = sd["param_groups"]
        n_decay = sum(self.decays)
        sizes = [len(g["params"]) for g in groups]
        if sizes != [n_decay, len(self.params) - n_decay]:
            raise ValueError(f"optimizer state has groups of {sizes} parameters; the fused "
                             f"model's are {[n_decay, len(self.params) - n_decay]}")
        if float(groups[1]["weight_decay"]) != 0.0:
            raise ValueError("optimizer state decays the 1-D parameters; the solo recipe "
                             "does not")
        if len({(tuple(g["betas"]), g["eps"], g["lr"]) for g in groups}) != 1:
            raise ValueError("optimizer state has per-group lr, betas or eps")
        ids = [i for g in groups for i in g["params"]]
        state = sd["state"]
        steps = set()
        moments = []
        for solo_index, i in zip(ids, self.solo_order):
            st = state.get(solo_index)
            if st is None:
                moments.append(None)
                continue
            shape = tuple(self.params[i].shape[1:])
            if tuple(st["exp_avg"].shape) != shape:
                raise ValueError(f"optimizer state {solo_index}: shape "
                                 f"{tuple(st['exp_avg'].shape)}, the parameter's is {shape}")
            steps.add(int(float(st["step"])))
            moments.append(st)
        if len(steps) > 1 or (steps and any(m is None for m in moments)):
            raise ValueError("optimizer state has parameters at different step counts")
        for st, i in zip(moments, self.solo_order):
            if st is None:
                self.exp_avg[i][k].zero_()
                self.exp_avg_sq[i][k].zero_()
            else:
                self.exp_avg[i][k].copy_(st["exp_avg"])
                self.exp_avg_sq[i][k].copy_(st["exp_avg_sq"])
        self.steps[k] = steps.pop() if steps else 0
        self.weight_decay[k] = float(groups[0]["weight_decay"])
        b1, b2 = groups[0]["betas"]
        self.betas[k] = (float(b1), float(b2))
        self.eps[k] = float(groups[0]["eps"])
        self.lr[k] = float(groups[0]["lr"])

    def reset_member(self, k: int, *, weight_decay: float | None = None,
                     betas: tuple[float, float] | None = None, eps: float | None = None,
                     lr: float | None = None) -> None:
        """A fresh optimizer for member k (a new trial in the slot), with its settings."""
        self.model.check_member(k)
        for m, v in zip(self.exp_avg, self.exp_avg_sq):
            m[k].zero_()
            v[k].zero_()
        self.steps[k] = 0
        if weight_decay is not None:
            self.weight_decay[k] = float(weight_decay)
        if betas is not None:
            self.betas[k] = (float(betas[0]), float(betas[1]))
        if eps is not None:
            self.eps[k] = float(eps)
        if lr is not None:
            self.lr[k] = float(lr)


def _adamw(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
           s: dict[str, torch.Tensor], decays: bool) -> None:
    """In place, for stacked tensors whose first axis matches the ``[K']`` scalars in ``s``.

    The operations and their order are those of torch's fused CPU AdamW kernel.
    """
    n = p.ndim
    if decays:
        p.mul_(lead(s["keep"], n))
    m.lerp_(g, lead(s["c1"], n))
    v.mul_(lead(s["b2"], n)).addcmul_(g * lead(s["c2"], n), g)
    denom = v.sqrt().div_(lead(s["bc2"], n)).add_(lead(s["eps"], n))
    p.addcdiv_(m * lead(s["size"], n), denom)
