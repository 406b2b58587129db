"""fp16 loss scaling for a fused array: torch's GradScaler, once per member.

One scale for the whole array would tie the members together: a member with a high learning
rate that overflows would halve the scale of all the others and skip their steps too. Each
member here has the scale, growth tracker and skipped steps its solo run's
``torch.amp.GradScaler`` would have, and its state dict is that scaler's, so a member's
checkpoint resumes in a solo run and back.
"""

from __future__ import annotations

from typing import Any

import torch

from hpsearch.trainer.fusion.model import FusedModel, lead


class MemberScaler:
    """``GradScaler(init_scale, growth_factor, backoff_factor, growth_interval)`` per member."""

    def __init__(self, k: int, device: torch.device | str, *, init_scale: float = 2.0**16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.k, self.init_scale = k, float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.scale = torch.full((k,), self.init_scale, dtype=torch.float32, device=device)
        self.tracker = torch.zeros(k, dtype=torch.int32, device=device)

    def scale_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """The ``[K]`` losses each times its member's scale, for one backward of their sum."""
        return losses * self.scale.to(losses.dtype)

    @torch.no_grad()
    def unscale_(self, model: FusedModel) -> torch.Tensor:
        """Divide every member's gradients by its scale; the ``[K]`` flags of members whose
        gradients overflowed (their step is to be skipped)."""
        inv = self.scale.double().reciprocal().float()
        found = torch.zeros(self.k, dtype=torch.bool, device=self.scale.device)
        for _, p in model.member_parameters():
            if p.grad is None:
                continue
            g = p.grad
            g.mul_(lead(inv.to(g.dtype), g.ndim))
            found |= ~torch.isfinite(g.reshape(self.k, -1)).all(dim=1)
        return found

    @torch.no_grad()
    def update(self, found_inf: torch.Tensor, active: torch.Tensor) -> None:
        """After the step, as ``GradScaler.update``: an overflow backs the scale off and starts
        the count again; ``growth_interval`` clean steps in a row grow it. Idle slots keep theirs.
        """
        for k in torch.nonzero(active).flatten().tolist():
            torch._amp_update_scale_(self.scale[k:k + 1], self.tracker[k:k + 1],
                                     found_inf[k:k + 1].float(), self.growth_factor,
                                     self.backoff_factor, self.growth_interval)

    def member_state_dict(self, k: int) -> dict[str, Any]:
        """What member k's solo ``GradScaler.state_dict()`` would hold."""
        return {"scale": float(self.scale[k]), "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": int(self.tracker[k])}

    def load_member_state_dict(self, k: int, sd: dict[str, Any]) -> None:
        """Member k continues from a solo scaler's state (an empty one: a fresh start)."""
        if not sd:
            self.reset_member(k)
            return
        theirs = (float(sd["growth_factor"]), float(sd["backoff_factor"]),
                  int(sd["growth_interval"]))
        ours = (self.growth_factor, self.backoff_factor, self.growth_interval)
        if theirs != ours:
            raise ValueError(f"loss scaler state has growth/backoff/interval {theirs}; the "
                             f"array's are {ours}")
        self.scale[k] = float(sd["scale"])
        self.tracker[k] = int(sd["_growth_tracker"])

    def reset_member(self, k: int) -> None:
        self.scale[k] = self.init_scale
        self.tracker[k] = 0

    def keep(self, live: list[int]) -> None:
        """Only the ``live`` members, in that order (the array shrank)."""
        self.k = len(live)
        self.scale = self.scale[live].clone()
        self.tracker = self.tracker[live].clone()
