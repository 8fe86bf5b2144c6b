"""Training autoregressive reward models (ARMs) on preference pairs (METHODS §2).

The ARM loss is a reference-free Bradley–Terry loss on summed response log-probs:

    L = -log sigmoid( beta_r * [ S(x, y_w) - S(x, y_l) ] ),   S = sum_t log pi_theta(y_t | x, y_<t)

Why not trl's ``DPOTrainer``: trl 1.x removed its reference-free switch (DPO always subtracts a
reference log-ratio), and PARM/UniARM need one batch carrying every objective's label with a
per-objective beta_r and a preference vector drawn per micro-batch (METHODS §4.2), which
DPOTrainer's loss cannot express. :class:`PreferenceTrainer` therefore subclasses
``transformers.Trainer`` (what trl builds on) and overrides only the loss, so accelerate,
multi-GPU/DeepSpeed/FSDP, schedulers and logging come unchanged.

Several processes (``torchrun`` / ``accelerate launch``): the config's batch is the GLOBAL batch
(``per_device_batch_size x gradient_accumulation_steps`` pairs per update on any number of
processes); :func:`data_parallel_batches` splits it, so one spec gives the same updates on one
process or many, up to floating-point noise.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mobench.data import PreferencePair


@dataclass(frozen=True)
class ARMTrainingConfig:
    """Optimisation settings shared by every method's training (defaults: official code)."""

    epochs: float = field(default=1.0, metadata={"help": "GenARM 1 epoch; PARM run.sh 2"})
    max_steps: int = field(default=-1, metadata={"help": "> 0: stop after this many updates"})
    per_device_batch_size: int = field(default=4, metadata={"help": "pairs per micro-batch"})
    gradient_accumulation_steps: int = field(
        default=8, metadata={"help": "official: effective batch 32 (8 GPUs x 4 pairs)"}
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "GenARM/PARM: 5e-4"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "GenARM/PARM: cosine"})
    warmup_steps: int = field(default=20, metadata={"help": "GenARM/PARM PKU: 20"})
    weight_decay: float = field(default=0.05, metadata={"help": "GenARM/PARM: 0.05"})
    max_length: int = field(default=1024, metadata={"help": "trl 0.9.6 default in both repos"})
    max_prompt_length: int = field(default=512, metadata={"help": "prompt truncated from the left"})
    seed: int = field(default=42, metadata={"help": "set_seed(42) in both repos"})


def check_training_config(config: ARMTrainingConfig) -> None:
    """Refuse optimisation settings no training can use (before anything loads).

    Raises:
        ConfigError: naming the field and the range it must be in.
    """
    from mobench.config import ConfigError

    def bad(name: str, rule: str) -> ConfigError:
        return ConfigError(f"method.{name}={getattr(config, name)!r}; it must be {rule}")

    for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_length"):
        if getattr(config, name) < 1:
            raise bad(name, "at least 1")
    if not 1 <= config.max_prompt_length <= config.max_length:
        raise bad("max_prompt_length", f"between 1 and max_length ({config.max_length})")
    if config.max_steps == 0 or config.max_steps < -1:
        raise bad("max_steps", "-1 (off) or at least 1")
    if not (config.epochs > 0 and math.isfinite(config.epochs)):
        raise bad("epochs", "a number > 0")
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise bad("learning_rate", "a number > 0")
    for name in ("warmup_steps", "weight_decay"):
        if getattr(config, name) < 0:
            raise bad(name, ">= 0")
    if config.seed < 0:
        raise bad("seed", ">= 0")


@dataclass
class TokenizedPair:
    """A preference pair as token ids: one prompt, two responses (EOS appended), its labels."""

    prompt_ids: list[int]
    response_ids: tuple[list[int], list[int]]
    labels: list[int]  # per objective in task order: preferred index, or -1 when unknown


#: a short text to ask a tokenizer what it adds around a sequence
_PROBE_TEXT = "Hello"


def uses_bos(tokenizer: Any) -> bool:
    """Whether the model expects BOS at the start of a sequence, decided by what its tokenizer
    does with special tokens: encode a text with and without them and see whether BOS comes
    first only with them.

    Why not ``tokenizer.add_bos_token``: under transformers 5 a Llama-2-style tokenizer whose
    tokenizer.json post-processor adds ``<s>`` reloads with ``add_bos_token=False`` although it
    still adds ``<s>`` (METHODS §10.6; the official code always prepends it). Not cached: a
    tokenizer's settings can change, and two short encodings cost microseconds.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = list(tokenizer(_PROBE_TEXT, add_special_tokens=True)["input_ids"])
    without = list(tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"])
    return bool(with_special) and with_special[0] == bos and without[:1] != [bos]


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt, with BOS prepended exactly once when the model expects
    one (:func:`uses_bos`; chat templates may already contain it: METHODS §10.6, double BOS).
    Training, decoding and the scorers all encode through this rule."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and uses_bos(tokenizer) and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def tokenize_pairs(
    pairs: Sequence[PreferencePair],
    render: Callable[[PreferencePair], str],
    tokenizer: Any,
    objectives: Sequence[str],
    config: ARMTrainingConfig,
) -> list[TokenizedPair]:
    """Tokenize prompt and responses separately (the response tokens are then exactly what the
    decoder would have generated after the prompt), keep the end of long prompts (trl's
    keep_end), and cut responses to fit ``max_length``."""
    eos = tokenizer.eos_token_id
    out = []
    for pair in pairs:
        prompt = encode_prompt(tokenizer, render(pair))[-config.max_prompt_length :]
        budget = max(1, config.max_length - len(prompt))
        responses = tuple(
            [*tokenizer(r, add_special_tokens=False)["input_ids"], eos][:budget]
            for r in pair.responses
        )
        labels = [pair.labels.get(o, -1) for o in objectives]
        out.append(TokenizedPair(prompt, (responses[0], responses[1]), labels))
    return out


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, pairs: list[TokenizedPair]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> TokenizedPair:
        return self.pairs[i]


def collate_pairs(pad_token_id: int) -> Callable[[list[TokenizedPair]], dict[str, torch.Tensor]]:
    """Right-pad 2B sequences (rows 2b and 2b+1 = response 0 and 1 of pair b); ``loss_mask``
    marks response tokens only (the prompt and padding do not count, METHODS §2)."""

    def collate(batch: list[TokenizedPair]) -> dict[str, torch.Tensor]:
        seqs, masks = [], []
        for p in batch:
            for r in p.response_ids:
                seqs.append(p.prompt_ids + r)
                masks.append([0] * len(p.prompt_ids) + [1] * len(r))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        loss_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
        for i, (s, m) in enumerate(zip(seqs, masks)):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
            loss_mask[i, : len(s)] = torch.tensor(m, dtype=torch.bool)
        labels = torch.tensor([p.labels for p in batch], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask, "labels": labels}

    return collate


class SequenceLogProbs(torch.nn.Module):
    """A causal LM whose forward is :func:`sequence_logprobs`: what :func:`train_pairs` hands to
    the Trainer.

    Why: data-parallel wrappers (DDP, FSDP, DeepSpeed) synchronise gradients only for work that
    runs through the wrapped module's ``forward``, and :func:`sequence_logprobs` calls the LM's
    body and head directly (to keep the head off prompt positions). Wrapping the LM in this
    module puts that work inside ``forward``; ``sequence_logprobs`` given this module (or a
    wrapper around it) calls it, so a method's loss code is the same on one process or many.
    """

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm
        # FSDP's default auto-wrap policy reads the model's unsplittable block classes
        self._no_split_modules = getattr(lm, "_no_split_modules", None)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """What ``TrainingArguments(gradient_checkpointing=True)`` calls: the LM's own."""
        self.lm.gradient_checkpointing_enable(**kwargs)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
    ) -> torch.Tensor:
        return _sequence_logprobs(self.lm, input_ids, attention_mask, loss_mask)


def sequence_logprobs(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """S(x, y) per row: the sum of log pi(y_t | x, y_<t) over positions where loss_mask is set.

    ``model`` is a causal LM (or peft model), or the model a ``pair_loss`` receives during
    :func:`train_pairs` (a :class:`SequenceLogProbs`, possibly inside DDP/FSDP/DeepSpeed).

    The LM head and the fp32 log-softmax run only at response positions: with a 50k-token
    vocabulary, the full (rows x length x vocab) log-softmax dominated a CPU training step.
    """
    if isinstance(getattr(model, "module", model), SequenceLogProbs):
        return model(input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask)
    return _sequence_logprobs(model, input_ids, attention_mask, loss_mask)


def _sequence_logprobs(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    from mobench.decoding import backbone_and_head

    backbone, head = backbone_and_head(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    # position t predicts token t+1
    predicts = loss_mask[:, 1:]
    rows, cols = predicts.nonzero(as_tuple=True)
    logits = head(hidden[:, :-1][rows, cols]).float()
    targets = input_ids[:, 1:][rows, cols]
    token_logps = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    out = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, rows, token_logps)


def bradley_terry_loss(
    logps: torch.Tensor, winners: torch.Tensor, beta_r: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of -log sigmoid(beta_r (S_w - S_l)) over pairs with a label (winner >= 0).

    Args:
        logps: (B, 2) summed log-probs of response 0 and 1.
        winners: (B,) index of the preferred response, -1 = no label (skipped).
    Returns:
        (loss, number of labelled pairs). With no labelled pair the loss is 0 with a graph.
    """
    valid = winners >= 0
    if not valid.any():
        return logps.sum() * 0.0, valid.sum()
    w = winners.clamp(min=0)
    s_w = logps.gather(1, w[:, None]).squeeze(1)
    s_l = logps.gather(1, (1 - w)[:, None]).squeeze(1)
    losses = -F.logsigmoid(beta_r * (s_w - s_l))
    return losses[valid].mean(), valid.sum()


#: computes the scalar loss of one micro-batch: (model, batch, micro-batch index) -> (loss, logs).
#: The model is for :func:`sequence_logprobs`; keep other state (e.g. a preference context)
#: outside it. The index is that of the single-process micro-batch (of the config's
#: ``per_device_batch_size`` pairs) holding these pairs, whatever the number of processes: a
#: method that draws randomness from (seed, index) draws the same for the same pairs on 1 or N
#: processes (one process: 0, 1, 2, ...).
PairLoss = Callable[[Any, dict[str, torch.Tensor], int], tuple[torch.Tensor, dict[str, float]]]

#: TrainingArguments fields that change what is learned: the method config (the spec) owns
#: them, so ``--trainer-config`` may not set them.
SPEC_TRAINING_ARGUMENTS = frozenset(
    {
        "optim",
        "optim_args",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "warmup_ratio",
        "lr_scheduler_kwargs",
        "label_smoothing_factor",
        "output_dir",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "weight_decay",
        "num_train_epochs",
        "max_steps",
        "seed",
        "data_seed",
        "bf16",
        "fp16",
        "use_cpu",
        "remove_unused_columns",
    }
)


@dataclass(frozen=True)
class TrainerSettings:
    """How a guide's training runs, given explicitly by the pipeline to ``Method.train`` and by
    the method to its trainer (:func:`train_pairs`, or a trainer it builds itself).

    Attributes:
        arguments: extra ``transformers.TrainingArguments`` for infrastructure, not results
            (``mobench run --trainer-config FILE``): ``deepspeed`` (a DeepSpeed JSON path),
            ``fsdp`` and ``fsdp_config``, ``gradient_checkpointing``, ``ddp_backend``,
            ``report_to``, ... Checked on construction (:func:`check_trainer_arguments`).
        on_update: called with (updates done, total updates) after each optimiser step (the
            pipeline's progress bar); None reports nothing.
    """

    arguments: dict[str, Any] = field(default_factory=dict)
    on_update: Callable[[int, int], None] | None = None

    def __post_init__(self) -> None:
        check_trainer_arguments(self.arguments)

    def callbacks(self) -> list[Any]:
        """TrainerCallbacks that report to :attr:`on_update` (none without it)."""
        return [update_progress_callback(self.on_update)] if self.on_update is not None else []


def check_trainer_arguments(overrides: dict[str, Any]) -> None:
    """Refuse unknown TrainingArguments fields and the ones the spec owns (one-line errors)."""
    if not overrides:
        return
    from transformers import TrainingArguments

    from mobench.config import ConfigError

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"--trainer-config: unknown TrainingArguments field(s) {', '.join(unknown)}"
        )
    owned = sorted(set(overrides) & SPEC_TRAINING_ARGUMENTS)
    if owned:
        raise ConfigError(
            f"--trainer-config sets {', '.join(owned)}, which changes what is learned; such "
            "settings belong to the spec: use --set method.<field>=<value> where the method has one"
        )


def launched_processes() -> int:
    """How many processes train together: ``WORLD_SIZE`` as torchrun / accelerate launch set it
    (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def data_parallel_batches(config: ARMTrainingConfig, processes: int) -> tuple[int, int]:
    """``(per-device batch, accumulation steps)`` that keep the config's global batch
    (``per_device_batch_size x gradient_accumulation_steps`` pairs) on ``processes`` processes.

    Each update then sees the same pairs as on one process (the data order is shared and cut
    into consecutive global batches). The accumulation steps are divided when they can be (the
    micro-batches stay the same); otherwise the per-device batch shrinks to the largest size
    that divides both itself and a process's share, so each new micro-batch lies inside one
    single-process micro-batch (and a method's per-micro-batch draws stay the same, PairLoss).

    Raises:
        ConfigError: the global batch does not split evenly over ``processes``.
    """
    from mobench.config import ConfigError

    per_device, accum = config.per_device_batch_size, config.gradient_accumulation_steps
    if processes <= 1:
        return per_device, accum
    if accum % processes == 0:
        return per_device, accum // processes
    total = per_device * accum
    if total % processes:
        raise ConfigError(
            f"a global batch of {total} pairs ({per_device} x {accum}) cannot be split evenly "
            f"over {processes} processes; make method.per_device_batch_size x "
            f"method.gradient_accumulation_steps a multiple of {processes}"
        )
    share = total // processes
    batch = math.gcd(per_device, share)
    return batch, share // batch


def single_process_micro_batch(step: int, rank: int, processes: int, parts: int) -> int:
    """The single-process micro-batch that holds rank ``rank``'s ``step``-th micro-batch.

    The processes share one data order cut into per-device batches, dealt round-robin (batch
    ``step * processes + rank``); ``parts`` of them make one single-process micro-batch
    (:func:`data_parallel_batches` keeps that a whole number).
    """
    return (step * processes + rank) // parts


def _trainer_class() -> type:
    from transformers import Trainer

    class PreferenceTrainer(Trainer):
        """``transformers.Trainer`` whose loss is a method's pairwise preference loss."""

        def __init__(
            self, *args: Any, pair_loss: PairLoss, parts_per_micro_batch: int = 1, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self.pair_loss = pair_loss
            self.micro_step = 0  # on this process
            # how many of this run's per-device batches make one single-process micro-batch
            self.parts_per_micro_batch = parts_per_micro_batch
            self.loss_history: list[float] = []

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            index = single_process_micro_batch(
                self.micro_step,
                self.args.process_index,
                self.args.world_size,
                self.parts_per_micro_batch,
            )
            loss, logs = self.pair_loss(model, inputs, index)
            self.micro_step += 1
            self.loss_history.append(float(loss.detach()))
            return (loss, logs) if return_outputs else loss

    return PreferenceTrainer


@dataclass
class TrainResult:
    steps: int
    first_loss: float
    last_loss: float
    losses: list[float]


def trainer_arguments(
    model: Any, config: ARMTrainingConfig, output_dir: str, *, bf16: bool, processes: int
) -> dict[str, Any]:
    """The TrainingArguments fields every mobench trainer (the pair trainer, trl's DPO) sets the
    same way: the config's optimisation settings, its batch as the global batch over
    ``processes`` (:func:`data_parallel_batches`), CPU use read from where ``model`` lives, no
    checkpoints (the pipeline saves the adapter), a loss logged every update, no tqdm (mobench
    draws its own progress) and no dataloader workers."""
    per_device, accum = data_parallel_batches(config, processes)
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        use_cpu=next(model.parameters()).device.type == "cpu",
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def train_pairs(
    model: Any,
    pairs: list[TokenizedPair],
    pair_loss: PairLoss,
    config: ARMTrainingConfig,
    *,
    pad_token_id: int,
    bf16: bool,
    output_dir: str,
    trainer: TrainerSettings | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters on ``pairs`` with ``pair_loss``.

    Runs under ``transformers.Trainer``: on one CPU, one GPU, or under ``accelerate launch`` /
    ``torchrun`` with several processes, data parallel with the same global batch (see
    :func:`data_parallel_batches`); DeepSpeed / FSDP come from the launcher's accelerate config
    or from ``trainer.arguments`` (:class:`TrainerSettings`, which also reports progress). The
    returned losses are averaged over processes: the loss of each global update, as one
    process would report it.
    """
    from transformers import TrainingArguments

    if not pairs:
        raise ValueError(
            "no training pairs: the train split is empty (check --limit / split sizes)"
        )
    processes = launched_processes()
    settings = trainer_arguments(model, config, output_dir, bf16=bf16, processes=processes)
    settings["remove_unused_columns"] = False  # the pair collator reads every column
    per_device = settings["per_device_train_batch_size"]
    accum = settings["gradient_accumulation_steps"]
    trainer = trainer or TrainerSettings()
    settings.update(trainer.arguments)  # checked: never a spec-owned field
    args = TrainingArguments(**settings)
    if args.world_size != processes:
        raise RuntimeError(
            f"the Trainer sees {args.world_size} processes but WORLD_SIZE is {processes}; launch "
            "with torchrun or accelerate launch (they set WORLD_SIZE), not mpirun"
        )
    callbacks = [*(callbacks or []), *trainer.callbacks()]
    trainer_cls = _trainer_class()
    hf_trainer = trainer_cls(
        model=SequenceLogProbs(model),
        args=args,
        train_dataset=PairDataset(pairs),
        data_collator=collate_pairs(pad_token_id),
        pair_loss=pair_loss,
        parts_per_micro_batch=config.per_device_batch_size // per_device,
        callbacks=callbacks,
    )
    # with tqdm disabled the Trainer prints every log dict to stdout; mobench draws its own
    # progress bar and keeps the losses (guide_config.json), so drop that printer
    from transformers.trainer_callback import PrinterCallback

    hf_trainer.remove_callback(PrinterCallback)
    hf_trainer.train()
    losses = hf_trainer.loss_history
    if args.world_size > 1:
        local = torch.tensor(losses, dtype=torch.float64, device=args.device)
        losses = hf_trainer.accelerator.reduce(local, reduction="mean").tolist()
    # per optimiser update: the mean loss of its micro-batches
    per_update = [
        sum(losses[i : i + accum]) / len(losses[i : i + accum])
        for i in range(0, len(losses), accum)
    ]
    return TrainResult(
        steps=int(hf_trainer.state.global_step),
        first_loss=per_update[0] if per_update else math.nan,
        last_loss=per_update[-1] if per_update else math.nan,
        losses=per_update,
    )


def update_progress_callback(on_update: Callable[[int, int], None]) -> Any:
    """A TrainerCallback that reports (updates done, total updates) after each optimiser step."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            on_update(int(state.global_step), int(state.max_steps))

    return _Progress()
