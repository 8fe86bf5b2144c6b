"""The reward models that score the papers' tasks (METHODS.md §7), loaded with plain transformers.

Two :class:`~mobench.interfaces.Scorer` classes cover the three model families:

* :class:`BeaverScorer` -- PKU-Alignment/beaver-7b-v1.0-reward and -cost (safety task, §7.1).
  These are safe-rlhf score models (``LlamaForScore``): a LLaMA backbone plus a linear
  ``score_head`` read at the last non-pad token ("end_scores"). A generic sequence-classification
  loader mis-reads that head (§10 item 14), so the architecture is rebuilt here from
  ``LlamaModel`` and the head weights, without the safe_rlhf package.
* :class:`SequenceClassifierScorer` -- GPT-2 scalar reward models (Ray2333/gpt2-large-helpful-
  and -harmless-reward_model) fed the (HH query, response) text pair, and the 2-class humor
  classifier (mohameddhiab/humor-no-humor) fed the response alone, reward = logit of class 1.

All scorers tokenise everything first, sort by length (longest first, so that an out-of-memory
batch fails at once), run right-padded batches under ``torch.inference_mode()`` and return the
scores in the caller's order. Texts longer than ``max_length`` tokens are cut at the right
(the end of a long response is lost; a warning says how many texts reached the limit).

Weights are read from safetensors only (never a pickle), and ``trust_remote_code`` is off.
Both scorers are built by :func:`load_paper_scorer`. torch and transformers are imported lazily,
so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mobench.data import Conversation
from mobench.interfaces import Scorer

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: safe-rlhf's class names for its LLaMA score model. "LlamaModelForScore" is what the first
#: revision of beaver-7b-v1.0-reward's config.json declared; later revisions say "LlamaForScore".
BEAVER_ARCHITECTURES = ("LlamaForScore", "LlamaModelForScore")

#: safe-rlhf's conversation template (its configs/constants.py: PROMPT_BEGIN, PROMPT_USER,
#: PROMPT_ASSISTANT). The response follows "ASSISTANT:" with no space.
BEAVER_BEGIN = "BEGINNING OF CONVERSATION: "
BEAVER_USER = "USER: {input} "
BEAVER_ASSISTANT = "ASSISTANT:"

#: safe-rlhf's normalizer adds this to the standard deviation before dividing.
_NORMALIZE_EPS = 1e-8

#: how each safe-rlhf ``score_type`` normalises its end score when ``do_normalize`` is set:
#: reward -> (x - mean) / (std + eps), cost -> x / (std + eps), critic -> x.
_NORMALIZE_FUNCTION = {"reward": "affine", "cost": "scale", "critic": "identity"}

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


class RewardModelError(ValueError):
    """A reward-model checkpoint mobench cannot use; the one-line message says what and where."""


# --------------------------------------------------------------------------------------------
# Prompt rendering
# --------------------------------------------------------------------------------------------


def _dialogue_turns(prompt: Conversation) -> list[str]:
    """The prompt's user/assistant turns in order, checked to alternate and to end with a user.

    System turns are dropped: none of these reward models saw a system prompt in training (the
    beaver template and the HH format have no place for one).
    """
    turns = [t for t in prompt if t["role"] != "system"]
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise ValueError(
                f"prompt turn {i} has role {turn['role']!r}, expected {expected!r}: a scored "
                "prompt alternates user/assistant turns, starting and ending with a user turn"
            )
    if not turns or len(turns) % 2 == 0:
        raise ValueError("a scored prompt must end with a user turn")
    return [t["content"] for t in turns]


def format_beaver_input(prompt: Conversation, response: str, eos_token: str) -> str:
    """Render a (prompt, response) pair in safe-rlhf's template for the beaver score models.

    Single turn: ``BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}``. Earlier
    assistant turns are closed with the tokenizer's EOS text, as safe-rlhf's ``format_prompt``
    does: ``... USER: {u1} ASSISTANT:{a1}</s>USER: {u2} ASSISTANT:{response}``.
    """
    parts = [BEAVER_BEGIN]
    for i, text in enumerate(_dialogue_turns(prompt)):
        if i % 2 == 0:
            parts.append(BEAVER_USER.format(input=text) + BEAVER_ASSISTANT)
        else:
            parts.append(text + eos_token)
    parts.append(response)
    return "".join(parts)


def format_hh_query(prompt: Conversation) -> str:
    """Render a conversation as an Anthropic HH dialogue that asks for the next assistant turn.

    Follows the usage example of Ray2333's GPT-2 reward models (a space before each
    ``\\n\\n`` turn marker): ``"\\n\\nHuman: {u1} \\n\\nAssistant: {a1} \\n\\nHuman: {u2}
    \\n\\nAssistant:"``. Turn texts are stripped of surrounding whitespace first.
    """
    rendered = []
    for i, text in enumerate(_dialogue_turns(prompt)):
        speaker = "Human" if i % 2 == 0 else "Assistant"
        rendered.append(f"\n\n{speaker}: {text.strip()}")
    return " ".join(rendered) + " \n\nAssistant:"


# --------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------


def resolve_checkpoint(source: str, revision: str | None = None) -> Path:
    """A local directory holding the checkpoint: ``source`` itself, or a hub snapshot of it.

    Hub downloads fetch only configs, tokenizer files and safetensors weights.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    looks_local = source.startswith(("/", ".", "~")) or source.count("/") != 1
    if looks_local:
        raise RewardModelError(f"reward model '{source}': no such directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id=source, revision=revision, allow_patterns=_HUB_PATTERNS)
        )
    except Exception as err:  # any hub failure (offline, 404, auth) becomes one clear line
        raise RewardModelError(
            f"reward model '{source}': not a local directory and the hub download failed "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _read_config(path: Path, source: str) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise RewardModelError(f"reward model '{source}': no config.json in {path}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise RewardModelError(
            f"reward model '{source}': {config_file} is not JSON ({err})"
        ) from err
    if not isinstance(config, dict):
        raise RewardModelError(f"reward model '{source}': {config_file} is not a JSON object")
    return config


def _weight_files(path: Path, source: str) -> dict[str, str]:
    """Map tensor name -> safetensors file name (relative to ``path``); raise if there is none."""
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        absent = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if absent:
            raise RewardModelError(
                f"reward model '{source}': shard(s) listed in {index.name} are missing: "
                + ", ".join(absent)
            )
        return weight_map
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {name: single.name for name in f.keys()}  # noqa: SIM118 (not a dict)
    others = sorted(
        p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".h5"}
    )
    hint = (
        f"; found {', '.join(others)}, which mobench does not load (pickled weights): convert "
        "them to safetensors or pick a revision that has model.safetensors"
        if others
        else ""
    )
    raise RewardModelError(
        f"reward model '{source}': no model.safetensors or model.safetensors.index.json in "
        f"{path}{hint}"
    )


def _read_tensors(path: Path, weight_map: dict[str, str], names: Sequence[str]) -> dict[str, Any]:
    """The named tensors that exist in the checkpoint (absent names are left out)."""
    from safetensors import safe_open

    found: dict[str, Any] = {}
    by_file: dict[str, list[str]] = {}
    for name in names:
        if name in weight_map:
            by_file.setdefault(weight_map[name], []).append(name)
    for file_name, file_names in by_file.items():
        with safe_open(str(path / file_name), framework="pt") as f:
            for name in file_names:
                found[name] = f.get_tensor(name)
    return found


def _checkpoint_version(path: Path, weight_files: Sequence[str]) -> str:
    """A short id of the checkpoint's contents for the fingerprint.

    A hub snapshot is named by its commit. Elsewhere: a SHA-256 over config.json and, per
    weights file, its size plus 16 evenly spaced 64 KiB samples and its last 1 MiB -- a
    sampled digest (cheap on 13 GB checkpoints), not a full hash, but any two trained
    checkpoints differ in it.
    """
    if path.parent.name == "snapshots":
        return f"rev-{path.name[:12]}"
    digest = hashlib.sha256((path / "config.json").read_bytes())
    chunk = 64 * 1024
    for name in sorted(set(weight_files)):
        file = path / name
        size = file.stat().st_size
        digest.update(f"{name}:{size}".encode())
        with file.open("rb") as f:
            for k in range(16):
                f.seek(size * k // 16)
                digest.update(f.read(chunk))
            f.seek(max(0, size - 16 * chunk))
            digest.update(f.read())
    return f"sha-{digest.hexdigest()[:12]}"


def _architectures(config: dict[str, Any]) -> list[str]:
    archs = config.get("architectures") or []
    return [str(a) for a in archs]


# --------------------------------------------------------------------------------------------
# torch helpers
# --------------------------------------------------------------------------------------------


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``None`` -> bfloat16 on CUDA (what PARM's relabelling used), float32 elsewhere."""
    import torch

    if dtype is None:
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    key = str(dtype).removeprefix("torch.")
    if key not in names:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(names))}")
    return names[key]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar while we check the load ourselves."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _load_tokenizer(path: Path, source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=False, local_files_only=True
        )
    except Exception as err:
        raise RewardModelError(
            f"reward model '{source}': cannot load its tokenizer from {path} "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err
    # Right padding keeps every real token at its unpadded position (no position-id shift).
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"
    return tokenizer


# --------------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------------


class _BatchedScorer(Scorer):
    """Shared batching: tokenise all rows, sort by length, run padded batches, restore order."""

    def __init__(
        self, objective: str, fingerprint: str, device: str, batch_size: int, max_length: int
    ) -> None:
        _check_sizes(batch_size, max_length)
        self.objective = objective
        self.fingerprint = fingerprint
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length

    @abstractmethod
    def _encode(
        self, prompts: Sequence[Conversation], responses: Sequence[str]
    ) -> list[dict[str, list[int]]]:
        """One token-id dict per row (``input_ids``, ``attention_mask``, ...), unpadded."""

    @abstractmethod
    def _pad_id(self) -> int:
        """The token id that fills padded positions."""

    @abstractmethod
    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores ``(B,)`` for one right-padded batch."""

    def score(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> np.ndarray:
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n = len(responses)
        out = np.zeros(n, dtype=np.float64)
        if n == 0:
            return out
        rows = self._encode(prompts, responses)
        at_limit = sum(len(r["input_ids"]) >= self.max_length for r in rows)
        if at_limit:
            log.warning(
                "%s: %d of %d texts reached max_length=%d tokens (cut at the right if longer)",
                self.fingerprint,
                at_limit,
                n,
                self.max_length,
            )
        order = sorted(range(n), key=lambda i: -len(rows[i]["input_ids"]))
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._collate([rows[i] for i in idx])
                scores = self._forward(batch)
                out[idx] = scores.float().cpu().numpy()
        return out

    def _collate(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            fill = self._pad_id() if key == "input_ids" else 0
            padded = [r[key] + [fill] * (width - len(r[key])) for r in rows]
            batch[key] = torch.tensor(padded, dtype=torch.long, device=self.device)
        return batch


def _rows(encoding: Any, keep: Sequence[str]) -> list[dict[str, list[int]]]:
    """Split a batched tokenizer output into per-row dicts holding only the ``keep`` keys."""
    keys = [k for k in keep if k in encoding]
    return [{k: list(encoding[k][i]) for k in keys} for i in range(len(encoding["input_ids"]))]


def _normalizer_stat(tensor: Any, config_value: Any, default: float) -> float:
    """A normaliser statistic: the checkpoint's tensor, else the config's value, else default."""
    if tensor is not None:
        return float(tensor.float().reshape(-1)[0])
    if config_value is not None:
        return float(np.ravel(config_value)[0])
    return default


def _check_sizes(batch_size: int, max_length: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")


class BeaverScorer(_BatchedScorer):
    """safe-rlhf's ``LlamaForScore`` (beaver-7b-v1.0-reward / -cost) rebuilt on ``LlamaModel``.

    Loading: the backbone comes from the checkpoint's ``model.*`` tensors via
    ``LlamaModel.from_pretrained`` (transformers strips the ``model.`` prefix; any missing
    backbone tensor is an error, not a random init). The head is
    ``nn.Linear(hidden, score_dim, bias=config["bias"])`` from ``score_head.weight`` (and
    ``score_head.bias``). As in safe-rlhf, only the config key ``bias`` (default False) decides
    whether the head has a bias; the beaver configs' separate ``score_bias`` key is not read by
    the architecture, and a ``score_head.bias`` tensor next to ``bias: false`` is ignored (with a
    warning), which is what safe-rlhf's loader does.

    Scoring: the head is applied to the last hidden state at the last non-pad token, in the
    model's dtype, then cast to float32. If the config sets ``do_normalize``, the end score is
    normalised as safe-rlhf's Normalizer does for the config's ``score_type``: reward ->
    ``(x - mean) / (sqrt(var) + 1e-8)``, cost -> ``x / (sqrt(var) + 1e-8)``, critic -> ``x``;
    mean/var come from the checkpoint's ``normalizer.mean/var`` tensors if present (they
    override the config when safe-rlhf loads), else from the config's ``mean``/``var``, else 0/1.
    ``negate=True`` (the cost model) then flips the sign so that higher is better ("harmless" =
    -cost). The sign never comes from ``score_type``: beaver-7b-v1.0-cost's config says
    ``"score_type": "reward"``.

    Args:
        source: a local checkpoint directory or a hub id.
        objective: the task objective this scorer serves (e.g. "helpful", "harmless").
        negate: return ``-score`` (set for the cost model).
        device: torch device for the model and inputs.
        dtype: model dtype; ``None`` = bfloat16 on CUDA, float32 elsewhere.
        batch_size: rows per forward pass.
        max_length: token limit per text (BOS included); longer texts are cut at the right.
        revision: hub revision, when ``source`` is a hub id.
        kind: the name recorded in the fingerprint.
    """

    def __init__(
        self,
        source: str,
        objective: str,
        *,
        negate: bool = False,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 8,
        max_length: int = 1024,
        revision: str | None = None,
        kind: str | None = None,
    ) -> None:
        import torch
        from transformers import LlamaModel

        _check_sizes(batch_size, max_length)
        kind = kind or ("beaver-cost" if negate else "beaver-reward")
        path = resolve_checkpoint(source, revision)
        config = _read_config(path, source)
        archs = _architectures(config)
        if not set(archs) & set(BEAVER_ARCHITECTURES) or config.get("model_type") != "llama":
            raise RewardModelError(
                f"reward model '{source}': kind '{kind}' needs a safe-rlhf LlamaForScore "
                f"checkpoint, but config.json declares architectures {archs or 'none'} "
                f"(model_type {config.get('model_type')!r})"
            )
        score_dim = int(config.get("score_dim", 1))
        if score_dim != 1:
            raise RewardModelError(
                f"reward model '{source}': score_dim is {score_dim}; mobench scores one scalar"
            )
        score_type = config.get("score_type", "reward")
        if score_type not in _NORMALIZE_FUNCTION:
            raise RewardModelError(
                f"reward model '{source}': unknown score_type {score_type!r}; expected one of "
                + ", ".join(_NORMALIZE_FUNCTION)
            )
        weight_map = _weight_files(path, source)
        torch_dtype = resolve_dtype(dtype, device)

        self.tokenizer = _load_tokenizer(path, source)
        if self.tokenizer.pad_token_id is None:
            # Any id works: padded positions are masked and never read.
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.negate = negate
        self.score_type = str(score_type)
        self.do_normalize = bool(config.get("do_normalize", False))

        with _quiet_transformers():
            loaded: Any = LlamaModel.from_pretrained(
                str(path),
                dtype=torch_dtype,
                use_safetensors=True,
                trust_remote_code=False,
                local_files_only=True,
                output_loading_info=True,
            )
        backbone, info = loaded
        problems = sorted(info.get("missing_keys", [])) + sorted(
            str(k) for k in info.get("mismatched_keys", [])
        )
        if problems:
            shown = ", ".join(problems[:4]) + (" ..." if len(problems) > 4 else "")
            raise RewardModelError(
                f"reward model '{source}': {len(problems)} backbone tensor(s) missing or of the "
                f"wrong shape in the checkpoint: {shown}"
            )
        self.backbone = backbone.to(device).eval()

        wanted = ["score_head.weight", "score_head.bias", "normalizer.mean", "normalizer.var"]
        tensors = _read_tensors(path, weight_map, wanted)
        if "score_head.weight" not in tensors:
            raise RewardModelError(f"reward model '{source}': no score_head.weight tensor")
        weight = tensors["score_head.weight"]
        hidden = int(config["hidden_size"])
        if tuple(weight.shape) != (1, hidden):
            raise RewardModelError(
                f"reward model '{source}': score_head.weight has shape {tuple(weight.shape)}, "
                f"expected (1, {hidden})"
            )
        use_bias = bool(config.get("bias", False))
        if use_bias and "score_head.bias" not in tensors:
            raise RewardModelError(
                f"reward model '{source}': config.json sets bias=true but the checkpoint has no "
                "score_head.bias tensor"
            )
        if not use_bias and "score_head.bias" in tensors:
            log.warning(
                "reward model '%s': score_head.bias is in the checkpoint but config.json has "
                "bias=false; ignoring it as safe-rlhf does",
                source,
            )
        self.head = torch.nn.Linear(hidden, 1, bias=use_bias)
        with torch.no_grad():
            self.head.weight.copy_(weight)
            if use_bias:
                self.head.bias.copy_(tensors["score_head.bias"].reshape(1))
        self.head = self.head.to(device=device, dtype=torch_dtype).eval()

        self.norm_mean = _normalizer_stat(tensors.get("normalizer.mean"), config.get("mean"), 0.0)
        self.norm_var = _normalizer_stat(tensors.get("normalizer.var"), config.get("var"), 1.0)

        version = _checkpoint_version(path, list(weight_map.values()))
        dtype_name = str(torch_dtype).removeprefix("torch.")
        super().__init__(
            objective,
            f"{kind}:{source}@{version}|dtype={dtype_name}|max_length={max_length}",
            device,
            batch_size,
            max_length,
        )
        self._warned_bos = False
        from mobench.training import uses_bos

        self.uses_bos = uses_bos(self.tokenizer)

    @property
    def info(self) -> dict[str, Any]:
        return {"bos": self.uses_bos}

    def _encode(
        self, prompts: Sequence[Conversation], responses: Sequence[str]
    ) -> list[dict[str, list[int]]]:
        from mobench.training import encode_prompt

        eos = self.tokenizer.eos_token or ""
        texts = [format_beaver_input(p, r, eos) for p, r in zip(prompts, responses, strict=True)]
        # BOS by the rule training and decoding use (mobench.training.uses_bos): what the
        # tokenizer adds with its special tokens, once; then the tokenizer's right truncation
        ids = [encode_prompt(self.tokenizer, t)[: self.max_length] for t in texts]
        if not self.uses_bos and not self._warned_bos:
            log.warning(
                "%s: the tokenizer adds no BOS; safe-rlhf's LLaMA tokenizer does",
                self.fingerprint,
            )
            self._warned_bos = True
        return [{"input_ids": row, "attention_mask": [1] * len(row)} for row in ids]

    def _pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        mask = batch["attention_mask"]
        hidden = self.backbone(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        # The end token is the last position whose mask is 1 (safe-rlhf's end_index).
        positions = torch.arange(mask.shape[1], device=mask.device)
        end = (positions * mask).argmax(dim=1)
        end_hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), end]
        scores = self.head(end_hidden).float()[:, 0]
        if self.do_normalize:
            scores = self._normalize(scores)
        return -scores if self.negate else scores

    def _normalize(self, scores: torch.Tensor) -> torch.Tensor:
        function = _NORMALIZE_FUNCTION[self.score_type]
        std = float(np.sqrt(self.norm_var))
        if function == "affine":
            return (scores - self.norm_mean) / (std + _NORMALIZE_EPS)
        if function == "scale":
            return scores / (std + _NORMALIZE_EPS)
        return scores


class SequenceClassifierScorer(_BatchedScorer):
    """A transformers ``*ForSequenceClassification`` reward model.

    Two input modes:

    * ``pair=True`` (the GPT-2 helpful/harmless models): the tokenizer gets the text pair
      (:func:`format_hh_query` of the prompt, response), as RiC/MOD and the model card do;
      ``logit_index`` 0 of a 1-label head. GPT-2 has no pad token, so pad = EOS; transformers
      reads GPT-2's score at the rightmost non-pad token. Truncation of a pair is the tokenizer's
      ``longest_first``: tokens are cut from the end of the longer of the two texts.
    * ``pair=False`` (the humor classifier): the response alone; the reward is the logit at
      ``logit_index`` (1 = "humor"), a raw logit as in MOD.

    Args:
        source: a local checkpoint directory or a hub id.
        objective: the task objective this scorer serves.
        pair: feed (HH query, response) as a text pair; else the response only.
        logit_index: which logit is the reward.
        num_labels: the head size the checkpoint must have (1 for scalar reward models); ``None``
            accepts any head with more than ``logit_index`` labels.
        device, dtype, batch_size, max_length, revision, kind: as for :class:`BeaverScorer`.
    """

    def __init__(
        self,
        source: str,
        objective: str,
        *,
        pair: bool,
        logit_index: int = 0,
        num_labels: int | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        max_length: int = 512,
        revision: str | None = None,
        kind: str = "seqcls",
    ) -> None:
        import inspect

        from transformers import AutoModelForSequenceClassification

        _check_sizes(batch_size, max_length)
        path = resolve_checkpoint(source, revision)
        config = _read_config(path, source)
        archs = _architectures(config)
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise RewardModelError(
                f"reward model '{source}': kind '{kind}' needs a *ForSequenceClassification "
                f"checkpoint, but config.json declares architectures {archs or 'none'}"
            )
        labels = len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2)
        if num_labels is not None and labels != num_labels:
            raise RewardModelError(
                f"reward model '{source}': kind '{kind}' needs a {num_labels}-label head, but "
                f"config.json has {labels} labels"
            )
        if logit_index >= labels:
            raise RewardModelError(
                f"reward model '{source}': kind '{kind}' reads logit {logit_index}, but the "
                f"head has {labels} labels"
            )
        weight_map = _weight_files(path, source)
        torch_dtype = resolve_dtype(dtype, device)

        self.tokenizer = _load_tokenizer(path, source)
        with _quiet_transformers():
            loaded: Any = AutoModelForSequenceClassification.from_pretrained(
                str(path),
                dtype=torch_dtype,
                use_safetensors=True,
                trust_remote_code=False,
                local_files_only=True,
                output_loading_info=True,
            )
        model, info = loaded
        problems = sorted(info.get("missing_keys", [])) + sorted(
            str(k) for k in info.get("mismatched_keys", [])
        )
        if problems:
            shown = ", ".join(problems[:4]) + (" ..." if len(problems) > 4 else "")
            raise RewardModelError(
                f"reward model '{source}': {len(problems)} tensor(s) missing or of the wrong "
                f"shape in the checkpoint (they would be randomly initialised): {shown}"
            )
        # Pad with the id the model treats as padding (GPT-2 finds its last token by it).
        pad_id = model.config.pad_token_id
        if pad_id is None:
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            pad_id = self.tokenizer.pad_token_id
            model.config.pad_token_id = pad_id
        self._pad = int(pad_id)
        self.model = model.to(device).eval()
        accepted = inspect.signature(self.model.forward).parameters
        self._inputs = [
            k for k in ("input_ids", "attention_mask", "token_type_ids") if k in accepted
        ]

        self.pair = pair
        self.logit_index = logit_index
        version = _checkpoint_version(path, list(weight_map.values()))
        dtype_name = str(torch_dtype).removeprefix("torch.")
        super().__init__(
            objective,
            f"{kind}:{source}@{version}|dtype={dtype_name}|max_length={max_length}",
            device,
            batch_size,
            max_length,
        )

    def _encode(
        self, prompts: Sequence[Conversation], responses: Sequence[str]
    ) -> list[dict[str, list[int]]]:
        responses = list(responses)
        if self.pair:
            queries = [format_hh_query(p) for p in prompts]
            enc = self.tokenizer(
                queries, responses, truncation="longest_first", max_length=self.max_length
            )
        else:
            enc = self.tokenizer(responses, truncation=True, max_length=self.max_length)
        return _rows(enc, self._inputs)

    def _pad_id(self) -> int:
        return self._pad

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(**batch).logits
        return logits[:, self.logit_index].float()


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


def _beaver(negate: bool) -> Callable[..., Scorer]:
    def build(source: str, objective: str, kind: str, **kwargs: Any) -> Scorer:
        return BeaverScorer(source, objective, negate=negate, kind=kind, **kwargs)

    return build


def _seqcls(source: str, objective: str, kind: str, **kwargs: Any) -> Scorer:
    return SequenceClassifierScorer(
        source, objective, pair=True, logit_index=0, num_labels=1, kind=kind, **kwargs
    )


def _seqcls_logit1(source: str, objective: str, kind: str, **kwargs: Any) -> Scorer:
    return SequenceClassifierScorer(
        source, objective, pair=False, logit_index=1, num_labels=None, kind=kind, **kwargs
    )


#: kind -> builder. beaver-*: safe-rlhf score models (cost negated); seqcls: scalar head on the
#: (HH query, response) pair; seqcls-logit1: logit 1 of a classifier fed the response only.
SCORER_KINDS: dict[str, Callable[..., Scorer]] = {
    "beaver-reward": _beaver(negate=False),
    "beaver-cost": _beaver(negate=True),
    "seqcls": _seqcls,
    "seqcls-logit1": _seqcls_logit1,
}


def load_paper_scorer(
    kind: str,
    source: str,
    objective: str,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    batch_size: int | None = None,
    max_length: int | None = None,
    revision: str | None = None,
) -> Scorer:
    """Build one of the papers' reward-model scorers.

    Args:
        kind: "beaver-reward", "beaver-cost", "seqcls" or "seqcls-logit1" (see
            :data:`SCORER_KINDS`).
        source: local checkpoint directory or hub id, e.g.
            "PKU-Alignment/beaver-7b-v1.0-cost".
        objective: the task objective the scores are for.
        device: torch device.
        dtype: model dtype; ``None`` = bfloat16 on CUDA, float32 elsewhere.
        batch_size: rows per forward (default 8 for beaver, 16 otherwise).
        max_length: token limit (default 1024 for beaver, 512 otherwise); cut at the right.
        revision: hub revision when ``source`` is a hub id.

    Raises:
        ValueError: unknown kind (the message lists the known ones).
        RewardModelError: the checkpoint is missing, incomplete or of another architecture.
    """
    if kind not in SCORER_KINDS:
        known = ", ".join(sorted(SCORER_KINDS))
        close = difflib.get_close_matches(kind, SCORER_KINDS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(f"unknown scorer kind '{kind}'; {hint}known: {known}")
    kwargs: dict[str, Any] = {"device": device, "dtype": dtype, "revision": revision}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    if max_length is not None:
        kwargs["max_length"] = max_length
    return SCORER_KINDS[kind](source, objective, kind, **kwargs)
