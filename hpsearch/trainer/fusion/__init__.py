"""K trials of one architecture trained as one model (horizontal fusion, as in HFTA).

A learning-rate or weight-decay search trains the same network on the same kind of batches
again and again; only the optimizer settings differ. Run one trial at a time and every kernel
of a small BERT is too small to keep the hardware busy. Run K trials as one model whose every
weight has a leading trial axis and each kernel does K times the work for one launch.

The fused model is the trials' own HF model with its ``Linear``, ``LayerNorm``, ``Embedding``
and ``Dropout`` submodules swapped for versions that hold ``[K, ...]`` weights. Its forward is
the HF forward on ``K * B`` rows, member ``k`` owning rows ``k*B .. (k+1)*B - 1``: a linear
layer is one batched matrix product over the trial axis, a layer norm normalises each row and
applies its member's scale, an embedding looks each member's ids up in its own table, and
attention, whose mask is per row, runs as the model has it, so members never mix.
(A ``torch.func.vmap`` of the functional model over stacked weights computed the same numbers
but was slower than K solo steps for K <= 4 on a CPU.) ``bench/fused_step.py`` measures a
fused step against K solo steps.

Members must be fed batches of one shape: ``stack_member_batches`` pads the others, and the
padding is computed like any token. Members that read the same batches (trials started
together, same data seed) or batches of one bucket (the fast path's fixed shapes) pay nothing
for it.

Everything a member owns can leave and enter in the solo formats: ``member_state_dict`` is
what a solo ``model.state_dict()`` holds, and ``FusedAdamW.member_state_dict`` is what the
solo loop's ``torch.optim.AdamW(..., fused=True).state_dict()`` holds after the same steps, so
a trial can move between a fused slot and a solo run (or a solo checkpoint) at any step.
"""

from hpsearch.trainer.fusion.batches import stack_member_batches
from hpsearch.trainer.fusion.layers import FusedDropout, FusedEmbedding, FusedLayerNorm, FusedLinear
from hpsearch.trainer.fusion.model import FusedModel, clip_grad_norm_per_member, member_losses
from hpsearch.trainer.fusion.optim import FusedAdamW
from hpsearch.trainer.fusion.scaler import MemberScaler

__all__ = [
    "FusedAdamW",
    "FusedDropout",
    "FusedEmbedding",
    "FusedLayerNorm",
    "FusedLinear",
    "FusedModel",
    "MemberScaler",
    "clip_grad_norm_per_member",
    "member_losses",
    "stack_member_batches",
]
