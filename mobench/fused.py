"""Several LoRA adapters on ONE copy of a frozen backbone, chosen per row, in one forward.

Guided decoding runs the same prompts through several models that differ only by a low-rank
adapter: the base (no adapter) and GenARM's k ARMs, or MOD-w2s's small reference (no adapter)
and its k small policies. Instead of k+1 forwards (or k+1 copies of the weights), the rows of
all of them go through one forward of the backbone (ARCHITECTURE "Performance design"): the
weights are read once per token, and only the rank-r deltas differ per row.

Rows are laid out **lane-major**: a batch of b prompts becomes ``L * b`` rows, lane ``l`` holding
rows ``l*b .. (l+1)*b - 1``. The first ``n_plain`` lanes use the backbone as is; each later lane
uses one adapter. A :class:`MultiLoRALinear` therefore finds its adapter rows as one contiguous
tail block and computes all adapters' deltas with two batched matmuls (rank-sized, no dense
delta-W), adding them in place. Plain rows get exactly ``W0 x``.

peft's own mixed-adapter batches (``adapter_names=[...]``) dispatch per row group and cost more
than separate model copies in bf16 here (OFFLINE.md §6); this module does not use peft at
decoding time, only reads the adapters peft saved (:func:`read_peft_lora`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

#: attribute under which :func:`inject_multi_lora` registers the shared layout on the model.
LAYOUT_ATTR = "lane_layout"

# adapter_config.json options this loader does not implement: each changes the forward, so a
# file using them is refused rather than decoded differently from peft.
_UNSUPPORTED_PEFT = {
    "use_dora": (False, None),
    "fan_in_fan_out": (False, None),
    "lora_bias": (False, None),
    "bias": ("none", None),
    "modules_to_save": (None, []),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None,),
    "layer_replication": (None,),
    "trainable_token_indices": (None,),
    "target_parameters": (None, []),
}


class AdapterFormatError(ValueError):
    """A saved adapter this module cannot load; the message says what and why."""


@dataclass(frozen=True)
class LoRAWeights:
    """One LoRA adapter: per module name (as in ``model.named_modules()``), ``(A, B)`` with
    ``A (r, in)`` and ``B (out, r)``, and the scale applied to ``B A x``."""

    name: str
    modules: dict[str, tuple[Tensor, Tensor]]
    scaling: float


def read_peft_lora(path: str | Path, name: str | None = None) -> LoRAWeights:
    """Read a LoRA adapter saved by peft's ``save_pretrained`` (safetensors) without peft.

    Module names are the wrapped model's own (``model.layers.0.self_attn.q_proj``): peft's
    ``base_model.model.`` prefix and ``.lora_A.weight`` suffix are stripped.

    Raises:
        AdapterFormatError: no adapter there, not a LoRA, or an option this loader would not
            reproduce exactly (DoRA, biases, rank/alpha patterns, ...).
    """
    from safetensors.torch import load_file

    path = Path(path)
    config_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.exists() or not weights_file.exists():
        raise AdapterFormatError(
            f"{path} has no adapter_config.json + adapter_model.safetensors; "
            "save the adapter with peft's save_pretrained(..., safe_serialization=True)"
        )
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise AdapterFormatError(f"{path} holds a {config.get('peft_type')} adapter, not LoRA")
    for key, allowed in _UNSUPPORTED_PEFT.items():
        if key in config and config[key] not in allowed:
            raise AdapterFormatError(
                f"{path}: LoRA option {key}={config[key]!r} is not supported by the fused "
                "decoder; retrain without it"
            )
    r, lora_alpha = int(config["r"]), float(config["lora_alpha"])
    scaling = lora_alpha / math.sqrt(r) if config.get("use_rslora") else lora_alpha / r
    state = load_file(str(weights_file))
    modules: dict[str, tuple[Tensor, Tensor]] = {}
    for key, a in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")].removeprefix("base_model.model.")
        b = state.get(key.replace(".lora_A.weight", ".lora_B.weight"))
        if b is None:
            raise AdapterFormatError(f"{path}: {key} has no matching lora_B")
        if a.shape[0] != r or b.shape[1] != r:
            raise AdapterFormatError(f"{path}: {module} has rank {a.shape[0]}, config says r={r}")
        modules[module] = (a, b)
    leftover = [k for k in state if ".lora_A." not in k and ".lora_B." not in k]
    if leftover:
        raise AdapterFormatError(f"{path}: unexpected tensors {leftover[:3]} (only LoRA A/B)")
    if not modules:
        raise AdapterFormatError(f"{path}: no lora_A/lora_B tensors")
    return LoRAWeights(name=name or path.name, modules=modules, scaling=scaling)


class LaneLayout:
    """Which rows of a forward use which adapter: ``n_plain`` plain lanes, then one lane per
    entry of ``adapters`` (an adapter index, repeats allowed). Rows are lane-major, so with
    b rows per lane, lane ``l`` is rows ``l*b .. (l+1)*b - 1``. ``adapters = ()`` (the default)
    makes every row plain: the model is then exactly the backbone."""

    def __init__(self, n_plain: int = 1, adapters: Sequence[int] = ()) -> None:
        self.set(n_plain, adapters)

    def set(self, n_plain: int, adapters: Sequence[int]) -> None:
        if n_plain < 0:
            raise ValueError(f"n_plain must be >= 0, got {n_plain}")
        self.n_plain, self.adapters = n_plain, tuple(int(a) for a in adapters)
        self.version = getattr(self, "version", 0) + 1  # invalidates the layers' gathered stacks

    @property
    def n_lanes(self) -> int:
        return self.n_plain + len(self.adapters)


#: one LoRA's part on one linear layer: ``(A (r, in), B (out, r), scale)``, or None where the
#: adapter does not touch the layer (a zero delta)
LayerAdapter = tuple[Tensor, Tensor, float] | None


def stack_adapters(base: nn.Linear, adapters: Sequence[LayerAdapter]) -> tuple[Tensor, Tensor]:
    """The adapters of one linear layer as fp32 stacks on its device, ``A (k, r, in)`` and
    ``s B (k, out, r)`` (the scale folded into B), zero-padded to the largest rank (exact: zeros
    add nothing); a None adapter is all zeros.

    Raises:
        AdapterFormatError: an adapter's shapes do not fit the layer.
    """
    n, m, device = base.out_features, base.in_features, base.weight.device
    rank = max([a.shape[0] for a, _, _ in (x for x in adapters if x is not None)], default=1)
    stack_a = torch.zeros(len(adapters), rank, m, dtype=torch.float32, device=device)
    stack_b = torch.zeros(len(adapters), n, rank, dtype=torch.float32, device=device)
    for j, adapter in enumerate(adapters):
        if adapter is None:
            continue
        a, b, scaling = adapter
        if a.shape[1] != m or b.shape[0] != n or a.shape[0] != b.shape[1]:
            raise AdapterFormatError(
                f"LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit a linear "
                f"layer {m} -> {n}; the adapter was trained on another model"
            )
        r = a.shape[0]
        stack_a[j, :r] = a.to(device=device, dtype=torch.float32)
        stack_b[j, :, :r] = b.to(device=device, dtype=torch.float32) * scaling
    return stack_a, stack_b


def adapted_layers(
    model: nn.Module, adapters: Sequence[LoRAWeights]
) -> list[tuple[str, nn.Linear, list[LayerAdapter]]]:
    """Every linear layer any of ``adapters`` touches, in name order: its module name, the
    layer, and each adapter's part on it (:data:`LayerAdapter`, in ``adapters`` order).

    Raises:
        AdapterFormatError: an adapter names a module the model lacks, or one that is not
            ``nn.Linear`` (it was trained on a different backbone).
    """
    named = dict(model.named_modules())
    out = []
    for module in sorted({m for adapter in adapters for m in adapter.modules}):
        linear = named.get(module)
        if not isinstance(linear, nn.Linear):
            found = "missing" if linear is None else type(linear).__name__
            raise AdapterFormatError(
                f"adapter module {module!r} is {found} in {type(model).__name__}; the adapter "
                "was trained on a different backbone"
            )
        parts: list[LayerAdapter] = [
            None if module not in ad.modules else (*ad.modules[module], ad.scaling)
            for ad in adapters
        ]
        out.append((module, linear, parts))
    return out


def replace_module(model: nn.Module, name: str, wrapper: nn.Module) -> None:
    """Put ``wrapper`` where the submodule ``name`` is."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, wrapper)


class MultiLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus several LoRA adapters, each applied to its own lane of rows.

    ``out = W0 x`` for plain rows and ``W0 x + s_j B_j A_j x`` for the rows of adapter j, the
    adapters' deltas computed together with two batched matmuls over the adapter lanes. Adapter
    tensors are kept in fp32 with the scale folded into B, and on a bf16 backbone the adapter
    rows' input is cast up and their sum ``W0 x + s B A x`` formed in fp32, rounded once to
    bf16: the numerics of peft's fp32 LoRA on a bf16 base (rank-sized fp32 matmuls cost no more
    than bf16 ones on CPU, and bf16 adapters moved guide log-probs measurably, PEER-CHECKS).
    Adapters of different ranks are zero-padded to the largest rank (exact: zeros add nothing).
    """

    lora_A: Tensor
    lora_B: Tensor
    layout: LaneLayout

    def __init__(
        self,
        base: nn.Linear,
        adapters: Sequence[LayerAdapter],
        layout: LaneLayout,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"can only wrap nn.Linear, got {type(base).__name__}")
        self.base_layer = base.requires_grad_(False)
        object.__setattr__(self, "layout", layout)  # shared by every layer; not a submodule
        stack_a, stack_b = stack_adapters(base, adapters)
        # A^T and (sB)^T, laid out for bmm: (adapters, in, r) and (adapters, r, out)
        self.register_buffer("lora_A", stack_a.transpose(1, 2).contiguous(), persistent=False)
        self.register_buffer("lora_B", stack_b.transpose(1, 2).contiguous(), persistent=False)
        self._gathered: tuple[int, Tensor, Tensor] | None = None

    def _stacks(self) -> tuple[Tensor, Tensor]:
        """A^T and B^T of the adapter lanes, in lane order (gathered once per layout)."""
        layout = self.layout
        if self._gathered is None or self._gathered[0] != layout.version:
            ids = list(layout.adapters)
            if ids == list(range(self.lora_A.shape[0])):
                a, b = self.lora_A, self.lora_B
            else:
                index = torch.tensor(ids, device=self.lora_A.device)
                a, b = self.lora_A.index_select(0, index), self.lora_B.index_select(0, index)
            self._gathered = (layout.version, a, b)
        return self._gathered[1], self._gathered[2]

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        layout = self.layout
        if not layout.adapters:
            return out
        rows = x.shape[0]
        if rows % layout.n_lanes:
            raise ValueError(
                f"batch of {rows} rows does not split into {layout.n_lanes} equal lanes; "
                "run lane-major batches (LaneStepper)"
            )
        start = layout.n_plain * (rows // layout.n_lanes)
        a, b = self._stacks()
        # (lanes, rows_per_lane * T, in) @ (lanes, in, r) @ (lanes, r, out): rank-sized only
        xs = x[start:].reshape(a.shape[0], -1, x.shape[-1]).to(a.dtype)
        rows_out = out[start:].view(a.shape[0], -1, out.shape[-1])
        if rows_out.dtype == a.dtype:
            # accumulated into out's adapter rows in place (out is the base layer's fresh,
            # contiguous output): no delta tensor, no separate add
            rows_out.baddbmm_(torch.bmm(xs, a), b)
        else:  # bf16 backbone: W0 x + s B A x in fp32, rounded once (as peft)
            rows_out.copy_(torch.baddbmm(rows_out.to(a.dtype), torch.bmm(xs, a), b))
        return out

    def extra_repr(self) -> str:
        return f"adapters={self.lora_A.shape[0]}, rank={self.lora_A.shape[2]}"


def inject_multi_lora(model: nn.Module, adapters: Sequence[LoRAWeights]) -> LaneLayout:
    """Wrap every linear layer that any adapter touches in a :class:`MultiLoRALinear` holding all
    ``adapters`` (index j = ``adapters[j]``), sharing one :class:`LaneLayout` that starts with every
    row plain. Registers the layout as ``model.lane_layout`` and returns it.

    Raises:
        AdapterFormatError: an adapter names a module the model lacks, or one that is not
            ``nn.Linear``, or the model already has adapters injected.
    """
    if getattr(model, LAYOUT_ATTR, None) is not None:
        raise AdapterFormatError("this model already has multi-LoRA adapters injected")
    if not adapters:
        raise ValueError("inject_multi_lora needs at least one adapter")
    layers = adapted_layers(model, adapters)  # every layer checked before any is replaced
    layout = LaneLayout()
    for module, linear, parts in layers:
        replace_module(model, module, MultiLoRALinear(linear, parts, layout))
    setattr(model, LAYOUT_ATTR, layout)
    return layout
