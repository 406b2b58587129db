"""K fused trials train as K solo runs would, and move in and out in the solo formats."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from conftest import REPO  # noqa: F401  (puts the repository on sys.path)
from torch import nn

from hpsearch.config import ScratchModel, TrainerConfig
from hpsearch.trainer import prepare
from hpsearch.trainer.batching import collate, make_batches
from hpsearch.trainer.fusion import (
    FusedAdamW,
    FusedModel,
    MemberScaler,
    clip_grad_norm_per_member,
    member_losses,
    stack_member_batches,
)
from hpsearch.trainer.kernels import use_cpu_kernels
from hpsearch.trainer.modeling import build_model
from hpsearch.trainer.optim import lr_at, param_groups

TINY = ScratchModel(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, vocab_size=800, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
STEPS = 20
RTOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Data:
    cfg: TrainerConfig
    prep: object
    batches: list[dict[str, torch.Tensor]]
    pad: int

    def model(self, seed: int) -> nn.Module:
        """A trial's model as the CPU loop builds it (seeded, with the CPU kernels)."""
        torch.manual_seed(seed)
        m = build_model(self.cfg, self.prep.tokenizer, self.prep.labels)
        use_cpu_kernels(m)
        return m.train()


@pytest.fixture(scope="module")
def data(demo_dir, tmp_path_factory) -> Data:
    cfg = TrainerConfig(data_dir=str(demo_dir), scratch=TINY, train_limit=300, val_limit=50,
                        max_tokens=512, precision="fp32", device="cpu", num_threads=1,
                        progress=False, seed=0)
    prep = prepare(cfg, demo_dir, tmp_path_factory.mktemp("cache"))
    pad = prep.tokenizer.pad_token_id
    idx = [i for e in range(2) for i in make_batches(prep.train.lengths, max_tokens=512,
                                                     seed=0, epoch=e)]
    return Data(cfg, prep, [collate(prep.train, i, pad, multiple=1) for i in idx], pad)


def hp(lr: float, wd: float, max_norm: float | None, beta2: float = 0.999) -> TrainerConfig:
    return TrainerConfig(data_dir="demo", learning_rate=lr, weight_decay=wd,
                         max_grad_norm=max_norm, adam_beta2=beta2, warmup_ratio=0.1)


def lrs(cfg: TrainerConfig, total: int = STEPS) -> list[float]:
    warmup = math.ceil(cfg.warmup_ratio * total)
    return [lr_at(s, cfg, total, warmup) for s in range(total)]


class Solo:
    """The solo loop's recipe: param_groups, fused torch AdamW, clip_grad_norm_, .loss."""

    def __init__(self, model: nn.Module, cfg: TrainerConfig):
        self.model, self.cfg = model, cfg
        self.opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                                     betas=(cfg.adam_beta1, cfg.adam_beta2),
                                     eps=cfg.adam_epsilon, fused=True)
        self.norms: list[float] = []

    def step(self, batch: dict[str, torch.Tensor], lr: float) -> float:
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss = self.model(**batch).loss
        loss.backward()
        if self.cfg.max_grad_norm:
            params = [p for p in self.model.parameters() if p.requires_grad]
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
            self.norms.append(float(norm))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


class Fused:
    """The same recipe for K members at once."""

    def __init__(self, members: list[nn.Module], cfgs: list[TrainerConfig], pad: int,
                 fused: bool | None = None):
        self.model = FusedModel(members).train()
        self.cfgs, self.pad = cfgs, pad
        self.opt = FusedAdamW(self.model, weight_decay=[c.weight_decay for c in cfgs],
                              betas=[(c.adam_beta1, c.adam_beta2) for c in cfgs],
                              eps=[c.adam_epsilon for c in cfgs],
                              lr=[c.learning_rate for c in cfgs], fused=fused)

    def forward_backward(self, batches) -> torch.Tensor:
        b = stack_member_batches(batches, self.pad)
        losses = member_losses(self.model(b["input_ids"], b["attention_mask"]), b["labels"])
        losses.sum().backward()
        return losses.detach()

    def step(self, batches, lr: list[float], active=None) -> torch.Tensor:
        losses = self.forward_backward(batches)
        clip_grad_norm_per_member(self.model, [c.max_grad_norm for c in self.cfgs])
        self.opt.step(lr, active)
        self.opt.zero_grad()
        return losses


def assert_losses_match(fused: list[float], solo: list[float]) -> None:
    rel = [abs(f - s) / abs(s) for f, s in zip(fused, solo)]
    assert max(rel) <= RTOL, rel


def assert_weights_match(sd: dict, model: nn.Module) -> None:
    ref = model.state_dict()
    assert list(sd) == list(ref)
    for key, value in ref.items():
        torch.testing.assert_close(sd[key], value, rtol=1e-4, atol=1e-5, msg=key)


CFGS = [hp(3e-3, 0.01, 1.0), hp(1e-3, 0.1, None, beta2=0.98), hp(6e-3, 0.0, 0.3)]


# ----------------------------------------------------------------------------- the model


def test_fused_forward_and_state_are_each_members(data):
    members = [data.model(s) for s in range(3)]
    fused = FusedModel(members).eval()
    for k, m in enumerate(members):
        sd = fused.member_state_dict(k)
        ref = m.state_dict()
        assert list(sd) == list(ref)
        assert all(torch.equal(sd[key], ref[key]) for key in ref)
    # three batches of different shapes, run as one
    batches = data.batches[:3]
    assert len({tuple(b["input_ids"].shape) for b in batches}) == 3
    b = stack_member_batches(batches, data.pad)
    with torch.no_grad():
        logits = fused(b["input_ids"], b["attention_mask"])
        losses = member_losses(logits, b["labels"])
        for k, (m, one) in enumerate(zip(members, batches)):
            out = m.eval()(**one)
            rows, width = one["input_ids"].shape
            torch.testing.assert_close(logits[k, :rows, :width], out.logits, rtol=1e-5,
                                       atol=1e-6)
            assert losses[k].item() == pytest.approx(out.loss.item(), rel=1e-6)
    # member 1 takes member 2's weights: a copy, not a view of anything
    sd2 = members[2].state_dict()
    fused.load_member_state_dict(1, sd2)
    got = fused.member_state_dict(1)
    assert all(torch.equal(got[key], sd2[key]) for key in sd2)
    got["classifier.bias"].add_(1.0)
    assert torch.equal(fused.member_state_dict(1)["classifier.bias"], sd2["classifier.bias"])
    with pytest.raises(ValueError, match="missing"):
        fused.load_member_state_dict(0, {k: v for k, v in sd2.items() if k != "classifier.bias"})


def test_models_it_cannot_fuse_are_refused():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.ones(4))

    with pytest.raises(ValueError, match="Scaled"):
        FusedModel([Scaled(), Scaled()])
    with pytest.raises(ValueError, match="Conv1d"):
        FusedModel([nn.Sequential(nn.Linear(4, 4), nn.Conv1d(4, 4, 1)) for _ in range(2)])
    with pytest.raises(ValueError, match="shapes differ"):
        FusedModel([nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 5))])
    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="tied"):
        FusedModel([tied, tied])


def test_per_member_dropout(data):
    members = [data.model(0), data.model(0)]
    fused = FusedModel(members)
    b = stack_member_batches([data.batches[0]] * 2, data.pad)
    with torch.no_grad():
        ref = fused.eval()(b["input_ids"], b["attention_mask"])
        fused.train()
        fused.set_dropout(1, 0.5)
        out = fused(b["input_ids"], b["attention_mask"])
        assert torch.equal(out[0], ref[0])  # member 0 keeps p = 0
        assert not torch.allclose(out[1], ref[1])
        fused.set_dropout(1, None)  # back to the member's own (0)
        assert torch.equal(fused(b["input_ids"], b["attention_mask"]), ref)


def test_idle_slot_costs_nothing_and_learns_nothing(data):
    fused = FusedModel([data.model(0), data.model(1)]).train()
    b = stack_member_batches([data.batches[0], None], data.pad)
    losses = member_losses(fused(b["input_ids"], b["attention_mask"]), b["labels"])
    assert losses[1].item() == 0.0 and torch.isfinite(losses[0])
    losses.sum().backward()
    for _, p in fused.member_parameters():
        assert torch.isfinite(p.grad).all() and not p.grad[1].any()


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("kernel", [True, False], ids=["torch-kernel", "vectorised"])
def test_fused_members_train_like_solo_runs_on_the_same_batches(data, kernel):
    solos = [Solo(data.model(k), c) for k, c in enumerate(CFGS)]
    fused = Fused([data.model(k) for k in range(3)], CFGS, data.pad, fused=kernel)
    assert fused.opt.fused is kernel
    schedule = [lrs(c) for c in CFGS]
    f_losses, s_losses = [], [[] for _ in CFGS]
    for step in range(STEPS):
        batch = data.batches[step]
        f_losses.append(fused.step([batch] * 3, [s[step] for s in schedule]).tolist())
        for k, solo in enumerate(solos):
            s_losses[k].append(solo.step(batch, schedule[k][step]))
    for k, solo in enumerate(solos):
        assert_losses_match([f[k] for f in f_losses], s_losses[k])
        assert_weights_match(fused.model.member_state_dict(k), solo.model)
    assert s_losses[0][-1] < s_losses[0][0]  # it learns
    assert max(solos[2].norms) > CFGS[2].max_grad_norm  # the clipping mattered


def test_members_on_different_batches_match_their_solo_runs(data):
    offsets = [0, 3, 11]
    steps = 12
    solos = [Solo(data.model(k), c) for k, c in enumerate(CFGS)]
    fused = Fused([data.model(k) for k in range(3)], CFGS, data.pad)
    schedule = [lrs(c, steps) for c in CFGS]
    f_losses, s_losses = [], [[] for _ in CFGS]
    for step in range(steps):
        batches = [data.batches[o + step] for o in offsets]
        assert len({tuple(b["input_ids"].shape) for b in batches}) > 1
        f_losses.append(fused.step(batches, [s[step] for s in schedule]).tolist())
        for k, solo in enumerate(solos):
            s_losses[k].append(solo.step(batches[k], schedule[k][step]))
    for k, solo in enumerate(solos):
        assert_losses_match([f[k] for f in f_losses], s_losses[k])
        assert_weights_match(fused.model.member_state_dict(k), solo.model)


def test_member_state_goes_to_a_solo_run_and_comes_back(data):
    first, then = 6, 4
    schedule = [lrs(c, first + then) for c in CFGS]
    solos = [Solo(data.model(k), c) for k, c in enumerate(CFGS)]
    fused = Fused([data.model(k) for k in range(3)], CFGS, data.pad)
    for step in range(first):
        fused.step([data.batches[step]] * 3, [s[step] for s in schedule])
        for k, solo in enumerate(solos):
            solo.step(data.batches[step], schedule[k][step])

    # The export is what torch's AdamW holds after the same steps.
    for k, solo in enumerate(solos):
        ours, ref = fused.opt.member_state_dict(k), solo.opt.state_dict()
        assert ours["param_groups"] == ref["param_groups"]
        assert ours["state"].keys() == ref["state"].keys()
        for i, st in ref["state"].items():
            assert ours["state"][i]["step"].dtype == st["step"].dtype
            assert ours["state"][i].keys() == st.keys()
            for key, value in st.items():
                torch.testing.assert_close(ours["state"][i][key], value, rtol=1e-3, atol=1e-7)

    # Fused member 1 -> a solo run (any seed: the state replaces it), continued both ways.
    moved = Solo(data.model(99), CFGS[1])
    moved.model.load_state_dict(fused.model.member_state_dict(1))
    moved.opt.load_state_dict(fused.opt.member_state_dict(1))
    # Solo member 2 -> fused member 2 (after scrambling it, so the load must do the work).
    fused.model.load_member_state_dict(2, data.model(98).state_dict())
    fused.opt.reset_member(2)
    fused.model.load_member_state_dict(2, solos[2].model.state_dict())
    fused.opt.load_member_state_dict(2, solos[2].opt.state_dict())
    solo_1 = Solo(data.model(97), CFGS[1])  # a solo twin of fused member 1, for the reference
    solo_1.model.load_state_dict(fused.model.member_state_dict(1))
    solo_1.opt.load_state_dict(fused.opt.member_state_dict(1))

    f_losses, moved_losses, s2_losses = [], [], []
    for step in range(first, first + then):
        batch = data.batches[step]
        f_losses.append(fused.step([batch] * 3, [s[step] for s in schedule]).tolist())
        moved_losses.append(moved.step(batch, schedule[1][step]))
        s2_losses.append(solos[2].step(batch, schedule[2][step]))
    assert_losses_match([f[1] for f in f_losses], moved_losses)
    assert_losses_match([f[2] for f in f_losses], s2_losses)
    assert_weights_match(fused.model.member_state_dict(1), moved.model)
    assert_weights_match(fused.model.member_state_dict(2), solos[2].model)
    assert fused.opt.member_state_dict(2)["param_groups"] == solos[2].opt.state_dict()[
        "param_groups"]


def test_each_member_has_its_own_loss_scale_like_a_solo_grad_scaler(data):
    """fp16 loss scaling, per member: a member whose scaled gradients overflow skips its step
    and backs its scale off alone; the others step and grow theirs, each exactly as its solo
    run's ``GradScaler`` would (run here in fp32 with scales big enough to overflow it)."""
    starts = [2.0**16, 3e38, 2.0**20]  # member 1's first steps overflow even fp32
    steps, interval = 8, 3
    solos = [Solo(data.model(k), c) for k, c in enumerate(CFGS)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=s, growth_interval=interval)
               for s in starts]
    fused = Fused([data.model(k) for k in range(3)], CFGS, data.pad)
    ms = MemberScaler(3, "cpu", growth_interval=interval)
    ms.scale = torch.tensor(starts)
    schedule = [lrs(c, steps) for c in CFGS]
    skipped = [0, 0, 0]
    for step in range(steps):
        batch = data.batches[step]
        b = stack_member_batches([batch] * 3, data.pad)
        losses = member_losses(fused.model(b["input_ids"], b["attention_mask"]), b["labels"])
        ms.scale_losses(losses).sum().backward()
        overflow = ms.unscale_(fused.model)
        clip_grad_norm_per_member(fused.model, [c.max_grad_norm for c in CFGS])
        active = torch.ones(3, dtype=torch.bool)
        fused.opt.step([s[step] for s in schedule], active & ~overflow)
        ms.update(overflow, active)
        fused.opt.zero_grad()
        for k, (solo, scaler) in enumerate(zip(solos, scalers)):
            for group in solo.opt.param_groups:
                group["lr"] = schedule[k][step]
            loss = solo.model(**batch).loss
            scaler.scale(loss).backward()
            scaler.unscale_(solo.opt)
            if solo.cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(solo.model.parameters(), solo.cfg.max_grad_norm)
            before = scaler.get_scale()
            scaler.step(solo.opt)
            scaler.update()
            skipped[k] += scaler.get_scale() < before
            solo.opt.zero_grad(set_to_none=True)
            assert bool(overflow[k]) == (scaler.get_scale() < before), (step, k)
            assert losses[k].item() == pytest.approx(loss.item(), rel=RTOL)
    assert skipped[1] >= 1 and skipped[0] == skipped[2] == 0
    for k, (solo, scaler) in enumerate(zip(solos, scalers)):
        assert ms.member_state_dict(k) == scaler.state_dict()
        assert_weights_match(fused.model.member_state_dict(k), solo.model)
        assert fused.opt.member_state_dict(k)["param_groups"] == solo.opt.state_dict()[
            "param_groups"]
    # A member's scaler state goes to a solo scaler and back.
    ms.load_member_state_dict(0, scalers[1].state_dict())
    assert ms.member_state_dict(0) == scalers[1].state_dict()
    ms.load_member_state_dict(0, {})
    assert ms.member_state_dict(0)["scale"] == 2.0**16


def test_frozen_body_trains_only_the_heads_like_solo_runs(data):
    """``full_finetuning: false``: only the classifier learns, in both, with the same state."""
    frozen = Data(data.cfg.model_copy(update={"full_finetuning": False}), data.prep,
                  data.batches, data.pad)
    cfgs = CFGS[:2]
    solos = [Solo(frozen.model(k), c) for k, c in enumerate(cfgs)]
    fused = Fused([frozen.model(k) for k in range(2)], cfgs, data.pad)
    assert [n for n, p in fused.model.member_parameters() if p.requires_grad] == [
        "classifier.weight", "classifier.bias"]
    schedule = [lrs(c, 5) for c in cfgs]
    for step in range(5):
        batch = data.batches[step]
        losses = fused.step([batch] * 2, [s[step] for s in schedule]).tolist()
        for k, solo in enumerate(solos):
            assert losses[k] == pytest.approx(solo.step(batch, schedule[k][step]), rel=RTOL)
    for k, solo in enumerate(solos):
        assert_weights_match(fused.model.member_state_dict(k), solo.model)
        assert fused.opt.member_state_dict(k)["param_groups"] == solo.opt.state_dict()[
            "param_groups"]


@pytest.mark.parametrize("kernel", [True, False], ids=["torch-kernel", "vectorised"])
def test_diverged_member_is_stopped_and_its_slot_refilled_without_touching_the_others(data,
                                                                                    kernel):
    """Member 1 diverges (absurd lr), is switched off, then takes a new trial from step 0."""
    cfgs = [CFGS[0], hp(1e30, 0.01, None), CFGS[2]]
    schedule = [lrs(c) for c in cfgs]
    fresh = hp(2e-3, 0.05, 1.0, beta2=0.99)  # the trial that refills slot 1
    fresh_schedule: list[float] = []
    solos = {0: Solo(data.model(0), cfgs[0]), 2: Solo(data.model(2), cfgs[2])}
    fused = Fused([data.model(k) for k in range(3)], cfgs, data.pad, fused=kernel)

    diverged_at = refill_at = None
    refill_solo = refill_losses = None
    f_losses, s_losses = [], {0: [], 2: []}
    for step in range(STEPS):
        batch = data.batches[step]
        lr = [schedule[0][step], schedule[1][step], schedule[2][step]]
        if refill_at is not None:
            lr[1] = fresh_schedule[step - refill_at]
        losses = fused.forward_backward([batch] * 3)
        ok = torch.isfinite(losses)
        if not ok[1] and diverged_at is None:
            diverged_at = step
        clip_grad_norm_per_member(fused.model, [c.max_grad_norm for c in fused.cfgs])
        active = ok.clone()
        if diverged_at is not None and refill_at is None:
            active[1] = False
        fused.opt.step(lr, active)
        fused.opt.zero_grad()
        f_losses.append(losses.tolist())
        for k, solo in solos.items():
            s_losses[k].append(solo.step(batch, schedule[k][step]))
        if refill_solo is not None:
            refill_losses.append(refill_solo.step(batch, fresh_schedule[step - refill_at]))
        if diverged_at is not None and refill_at is None and step >= diverged_at + 1:
            refill_at = step + 1  # a new trial takes the slot from the next step on
            new = data.model(42)
            fused.model.load_member_state_dict(1, new.state_dict())
            fused.opt.reset_member(1, weight_decay=fresh.weight_decay,
                                   betas=(fresh.adam_beta1, fresh.adam_beta2),
                                   eps=fresh.adam_epsilon)
            fused.cfgs[1] = fresh
            fresh_schedule = lrs(fresh, STEPS - refill_at)
            refill_solo, refill_losses = Solo(data.model(42), fresh), []

    assert diverged_at is not None and diverged_at <= 3
    assert refill_at is not None and len(refill_losses) >= 10
    for k in (0, 2):
        assert_losses_match([f[k] for f in f_losses], s_losses[k])
        assert_weights_match(fused.model.member_state_dict(k), solos[k].model)
    assert_losses_match([f[1] for f in f_losses[refill_at:]], refill_losses)
    assert_weights_match(fused.model.member_state_dict(1), refill_solo.model)
    assert fused.opt.member_state_dict(1)["param_groups"] == refill_solo.opt.state_dict()[
        "param_groups"]
