"""What one trial trains: model, data, optimiser, batching, precision; and what may be searched."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from hpsearch.config.base import Strict


class ScratchModel(Strict):
    """A BERT built from a config, with a WordPiece vocabulary learnt from the training data.

    Lets a study (and the test suite) run with no downloaded weights at all.
    """

    hidden_size: int = Field(default=64, ge=8)
    num_hidden_layers: int = Field(default=2, ge=1)
    num_attention_heads: int = Field(default=2, ge=1)
    intermediate_size: int = Field(default=128, ge=8)
    vocab_size: int = Field(default=2000, ge=100)
    max_position_embeddings: int = Field(default=512, ge=16)
    hidden_dropout_prob: float = Field(default=0.1, ge=0, lt=1)
    attention_probs_dropout_prob: float = Field(default=0.1, ge=0, lt=1)
    lowercase: bool = False

    @model_validator(mode="after")
    def _heads(self) -> ScratchModel:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        return self


class EarlyStopping(Strict):
    patience: int = Field(ge=1)
    min_delta: float = Field(default=0.0, ge=0)
    min_epochs: int = Field(default=0, ge=0)


class TrainerConfig(Strict):
    """Everything one trial's training run needs; searched parameters override these fields."""

    model: str = Field(
        default="scratch",
        description="'scratch', a hub name, a local HF folder, or 'package:NAME' for a model "
        "folder shipped inside an installed Python package",
    )
    scratch: ScratchModel = Field(default_factory=ScratchModel)
    data_dir: str = Field(
        description="a data folder, 'demo' for the generated demo set, or (data_format: hf) "
        "a 🤗 datasets hub name")
    data_format: Literal["auto", "bert-ner", "conll", "hf"] = Field(
        default="auto", description="auto finds bert-ner, conll, or hf by a save_to_disk "
        "folder's dataset_dict.json; a hub name needs hf")
    hf_tokens_column: str = Field(default="tokens", min_length=1,
                                  description="hf: the column of word lists")
    hf_tags_column: str = Field(
        default="ner_tags", min_length=1,
        description="hf: the column of tag lists, ClassLabel ids (their names are the tags) "
        "or tag strings")
    train_limit: int | None = Field(default=None, ge=1, description="use the first N sentences")
    val_limit: int | None = Field(default=None, ge=1)
    max_length: int = Field(default=128, ge=8, description="sub-word tokens per window")

    learning_rate: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    adam_beta1: float = Field(default=0.9, gt=0, lt=1)
    adam_beta2: float = Field(default=0.999, gt=0, lt=1)
    adam_epsilon: float = Field(default=1e-8, gt=0)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    full_finetuning: bool = True

    max_epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    max_tokens: int = Field(default=4096, ge=16, description="token budget of one batch")
    batch_size: int | None = Field(
        default=None, ge=1, description="fixed sentences per batch instead of a token budget"
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=1024,
        description="forward and backward passes per optimizer update: each batch (max_tokens "
        "or batch_size stay the budget of one update) is split into this many micro-batches "
        "whose gradients add up to the whole batch's (each micro-batch's loss weighted by its "
        "labelled tokens), so a trial computes what it would without it, in about 1/N of the "
        "activation memory; steps, schedules, eval_every and checkpoint_every count updates",
    )
    eval_every: int | None = Field(default=None, ge=1, description="steps; default once an epoch")
    checkpoint_every: int | None = Field(
        default=None, ge=1, description="steps between checkpoints, besides one at every eval"
    )
    eval_batch_tokens: int = Field(default=16384, ge=16)
    seqeval_mode: Literal["default", "strict"] = Field(
        default="default", description="strict: seqeval's strict IOB2 scoring (an I- that "
        "opens an entity is a miss)")
    early_stopping: EarlyStopping | None = None

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    compile: bool = False
    gradient_checkpointing: bool = Field(
        default=False,
        description="recompute each layer's activations in the backward pass instead of "
        "keeping them (Hugging Face's, non-reentrant): the same numbers in less memory, for "
        "about a third more compute; on CUDA it runs without the CUDA-graph fast path; not "
        "with compile: true",
    )
    fast_path: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="CUDA: static shapes (windows padded to `buckets`, fixed rows per bucket) "
        "and torch.compile(mode='reduce-overhead'), i.e. CUDA graphs. CPU: dropout masks from a "
        "faster generator and leaner attention (trainer/kernels.py); `on` adds the buckets. "
        "auto = graphs on CUDA, kernels on CPU; off = the model exactly as transformers runs it",
    )
    buckets: list[Annotated[int, Field(ge=8)]] = Field(
        default=[64, 128, 256], min_length=1, description="padded widths of the fast path"
    )
    num_threads: int | None = Field(default=None, ge=1)
    seed: int | None = None
    progress: bool = True
    monitor_every: int = Field(
        default=10, ge=0, description="steps between per-layer gradient norms and activation "
        "statistics in metrics.jsonl; 0 = off (loss and lr are logged every step regardless)")
    fuse: int = Field(
        default=1, ge=1, le=64,
        description="trials trained as one batched model (horizontal fusion); 1 = one by one",
    )
    devices_per_trial: int = Field(
        default=1, ge=1, le=64,
        description="processes (one a device: NCCL on CUDA, gloo on CPU) that train one trial "
        "together under torch.distributed, started by hpsearch; each step's batch is split "
        "across them and the batch stays the one-device batch, so results do not depend on N. "
        "On CUDA the trial's N visible GPUs (--gpus-per-trial)",
    )

    @field_validator("devices_per_trial")
    @classmethod
    def _devices(cls, v: int, info: ValidationInfo) -> int:
        device = info.data.get("device", "auto")
        if v > 1 and device.startswith("cuda:"):
            raise ValueError(f"device {device} names one GPU; with devices_per_trial: {v} "
                             "rank r takes the r-th visible GPU: use device auto or cuda")
        return v

    @field_validator("gradient_checkpointing")
    @classmethod
    def _checkpointing(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("compile"):
            raise ValueError("not with compile: true (a compiled model's recomputation is "
                             "untested); use one or the other")
        return v


#: Trainer fields that describe how a run is carried out, not what it computes: a checkpoint
#: written under other values resumes all the same, and changing them is not a new study.
#: Gradient checkpointing recomputes the same activations with the same RNG state: the same
#: numbers, so it is one of them. So is devices_per_trial: the global batch is the one-device
#: batch, summed in another order (and a checkpoint resumes on any number of devices).
RUN_ONLY = frozenset({"progress", "num_threads", "device", "fast_path", "buckets", "fuse",
                      "monitor_every", "gradient_checkpointing", "devices_per_trial"})

#: Fields added after studies had been recorded: at their default they are left out of a
#: study's fingerprint, so a study recorded before them resumes; set otherwise, they count.
RECORDED_IF_SET = frozenset({"hf_tokens_column", "hf_tags_column",
                             "gradient_accumulation_steps", "gradient_checkpointing"})

#: Searched fields that change a batch's shape or which weights train: fused members share
#: every batch's shape and the set of trained weights, so these cannot differ between them.
UNFUSABLE = frozenset({"max_tokens", "batch_size", "full_finetuning"})


#: Trainer fields a search space may tune; the rest describe the run, not its hyperparameters.
TUNABLE = frozenset(
    {
        "learning_rate",
        "weight_decay",
        "warmup_ratio",
        "schedule",
        "max_grad_norm",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "dropout",
        "max_epochs",
        "max_tokens",
        "batch_size",
        "full_finetuning",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
    }
)
