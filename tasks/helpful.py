"""Helpful assistant on Anthropic HH-RLHF: helpful, harmless, humor (METHODS §7.2).

Objectives, in alpha order: ("helpful", "harmless", "humor"). An HH row labels only its subset's
objective (helpful-base -> helpful, harmless-base -> harmless), and no row labels humor, so the
``paper`` and ``mini`` presets relabel every pair with the three scorers (PARM).

Data (see :mod:`mobench.tasks.sources` for the string grammar):

* hub: ``Anthropic/hh-rlhf`` with ``?subsets=helpful-base,harmless-base`` (the default; any of
  helpful-base, harmless-base, helpful-online, helpful-rejection-sampled) and ``?split=train``
  (default) or ``test``; ``@REVISION`` pins a revision;
* a local folder in the upstream layout ``<subset>/<split>.jsonl.gz`` (same options), or one
  upstream ``.jsonl(.gz)`` file;
* mobench's pair format (``builtin:helpful_tiny.jsonl``: 60 hand-written pairs with all three
  labels, the ``tiny`` preset).

Each dialogue is parsed into turns: the shared prefix is the prompt, the final assistant turns are
the two responses. Prompts are rendered with each model's own chat template (multi-turn); a model
without one gets the HH format ``\\n\\nHuman: ...\\n\\nAssistant:``. Generated text is cut where it
starts a new "Human:" / "Assistant:" turn before scoring. The 3-objective grid is MOD's 13
vectors by default (``--grid simplex-0.1`` for the full 66-vector lattice).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mobench.tasks.formats import (
    HH_MAX_SKIP_RATE,
    HH_SUBSET_OBJECTIVES,
    HHDefect,
    check_hh_schema,
    hh_record_to_pair,
    load_hh_file,
    load_pair_file,
    render_hh_query,
    truncate_at_new_turn,
)
from mobench.tasks.preference import PreferenceTask
from mobench.tasks.safety import (
    MINI_HARMLESS_SCORER,
    MINI_HELPFUL_SCORER,
    MINI_TRAINING,
    TINY_TRAINING,
)
from mobench.tasks.sources import DataSource, load_hub_rows, parse_data_string

from mobench.config import ConfigError, GenerationConfig, Preset
from mobench.data import DATA_DIR_PREFIX, Conversation, DataError, PreferencePair, iter_records
from mobench.interfaces import fold_system_turn
from mobench.registry import register_preset, register_task

if TYPE_CHECKING:
    from mobench.config import RunSpec

log = logging.getLogger("mobench")

HH_HUB = "Anthropic/hh-rlhf"
DEFAULT_SUBSETS = ("helpful-base", "harmless-base")
#: where a local data folder (``--data-dir``) keeps HH-RLHF, in the upstream layout
LOCAL_FOLDER = "hh-rlhf"
LLAMA2_7B_CHAT = "meta-llama/Llama-2-7b-chat-hf"
TINYLLAMA_CHAT = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


def _subsets(source: DataSource) -> tuple[str, ...]:
    subsets = source.option_list("subsets", DEFAULT_SUBSETS)
    unknown = sorted(set(subsets) - set(HH_SUBSET_OBJECTIVES))
    if unknown:
        raise DataError(
            f"data '{source.text}': unknown HH-RLHF subset(s) {', '.join(unknown)}; known: "
            f"{', '.join(HH_SUBSET_OBJECTIVES)}"
        )
    return subsets


def _local_file(folder: Path, subset: str, split: str) -> Path | None:
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        if (folder / subset / name).is_file():
            return folder / subset / name
    return None


def _with_split_id(pair: PreferencePair, subset: str, split: str, row: int) -> PreferencePair:
    # ids must stay unique when train and test files of one subset are read together
    pair.id = f"{subset}/{split}:{row}"
    pair.meta["split"] = split
    return pair


@register_task("helpful")
class HelpfulTask(PreferenceTask):
    """HH-RLHF helpful assistant: helpful, harmless, humor."""

    name = "helpful"
    objectives = ("helpful", "harmless", "humor")
    objective_phrases: ClassVar[dict[str, str]] = {
        "helpful": "helpfulness",
        "harmless": "harmlessness",
        "humor": "humor",
    }
    source_options = ("subsets", "split")
    # HH files put the chosen response first
    default_options: ClassVar[dict[str, Any]] = {
        **PreferenceTask.default_options,
        "shuffle_responses": True,
    }

    def read_rows(self, spec: RunSpec) -> tuple[list[PreferencePair], dict[str, Any]]:
        source = parse_data_string(spec.data, self.source_options)
        split = source.options.get("split", "train")
        info: dict[str, Any] = {"source": spec.data, "kind": source.kind}
        if source.kind != "hub" and source.path.is_file():
            first = next(iter_records(source.path), None)
            if first is not None and "responses" in first[1]:  # mobench's pair format
                if source.options:
                    raise DataError(f"data '{spec.data}': ?options apply to HH folders and the hub")
                return load_pair_file(source.path, self.objectives), info
            if source.options.get("split"):
                raise DataError(f"data '{spec.data}': ?split applies to folders and the hub")
            subset = source.options.get("subsets")
            pairs, skipped = load_hh_file(source.path, subset=subset, skip_malformed=True)
            info["skipped_rows"] = {str(source.path): skipped}
            return pairs, info
        rows: list[PreferencePair] = []
        skipped_rows: dict[str, int] = {}
        for subset in _subsets(source):
            objective = HH_SUBSET_OBJECTIVES[subset]
            if source.kind == "hub":
                records = load_hub_rows(source, split=split, data_dir=subset)
                where = f"{source.location}/{subset}[{split}]"
                skipped = 0
                for i, rec in enumerate(records, start=1):
                    if i == 1:
                        check_hh_schema(rec, i, where)
                    try:
                        pair = hh_record_to_pair(rec, i, where, objective, subset=subset)
                    except HHDefect:
                        skipped += 1  # known upstream defects (~1 %), counted below
                        continue
                    rows.append(_with_split_id(pair, subset, split, i))
                if skipped > max(1.0, HH_MAX_SKIP_RATE * len(records)):
                    raise DataError(
                        f"{where}: {skipped} of {len(records)} rows are not usable HH pairs, "
                        f"more than the {HH_MAX_SKIP_RATE:.0%} upstream has; check the source"
                    )
                skipped_rows[where] = skipped
                if skipped:
                    log.warning(
                        "%s: skipped %d of %d rows that are not usable HH pairs",
                        where,
                        skipped,
                        len(records),
                    )
            else:
                path = _local_file(source.path, subset, split)
                if path is None:
                    raise DataError(
                        f"{source.path / subset}: no {split}.jsonl.gz; an HH-RLHF folder holds "
                        f"<subset>/<split>.jsonl.gz (pick the split with ?split=, e.g. ?split=test)"
                    )
                pairs, skipped = load_hh_file(path, subset=subset, skip_malformed=True)
                rows.extend(_with_split_id(p, subset, split, p.meta["row"]) for p in pairs)
                skipped_rows[str(path)] = skipped
        info.update({"subsets": list(_subsets(source)), "split": split})
        # upstream rows with differing prefixes, non-alternating turns or identical responses
        info["skipped_rows"] = skipped_rows
        return rows, info

    @classmethod
    def local_data(cls, data_dir: Path, data: str) -> str:
        """``Anthropic/hh-rlhf?...`` -> ``DIR/hh-rlhf?...`` (the upstream folder layout)."""
        source = parse_data_string(data, cls.source_options)
        if source.kind != "hub":
            return data
        folder = Path(data_dir) / LOCAL_FOLDER
        split = source.options.get("split", "train")
        missing = [s for s in _subsets(source) if _local_file(folder, s, split) is None]
        if missing:
            have = sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.jsonl*"))
            raise ConfigError(
                f"no local copy of {source.location} split '{split}' for {', '.join(missing)} in "
                f"{folder}; found: {', '.join(have) or 'nothing'} (pick another split with "
                f"--data '{folder}?split=test', or use the mini preset)"
            )
        query = data.partition("?")[2]
        return str(folder) + (f"?{query}" if query else "")

    def render(self, prompt: Conversation, tokenizer: Any, template: str | None = None) -> str:
        """The whole conversation in the model's chat template; the HH format without one (a
        leading system turn, from preference prompting, goes before the first user message)."""
        if template is None and not getattr(tokenizer, "chat_template", None):
            return render_hh_query(fold_system_turn(prompt))
        return super().render(prompt, tokenizer, template)

    def postprocess(self, response: str) -> str:
        return truncate_at_new_turn(response)


# ------------------------------------------------------------------------------------ presets

register_preset(
    Preset(
        name="tiny",
        task="helpful",
        description=(
            "CPU, offline, minutes: SmolLM2-135M-Instruct as base and guide backbone, 60 "
            "hand-written HH-style pairs, SmolLM2 yes/no PROXY scorers (incl. humor)"
        ),
        base_model="smollm2-135m-instruct",
        data="builtin:helpful_tiny.jsonl",
        split_sizes=(48, 4, 8),
        split_seed=0,
        test_limit=4,
        generation=GenerationConfig(max_new_tokens=40),
        training={**TINY_TRAINING, "max_steps": 12},  # 48 training pairs: one epoch
        scorers={
            "helpful": "yesno:smollm2-135m-instruct",
            "harmless": "yesno:smollm2-135m-instruct",
            "humor": "yesno:smollm2-135m-instruct",
        },
        hv_ref_point=(0.0, 0.0, 0.0),
        grid="mod13",
        batch_size=26,
    )
)

register_preset(
    Preset(
        name="mini",
        task="helpful",
        description=(
            "CPU, offline, < 1 h (needs --data-dir): SmolLM2-135M-Instruct base and ARM "
            "backbone on real HH-RLHF test pairs (helpful-base + harmless-base), relabelled by "
            "SmolLM2 reward models mobench trains on real HH pairs; humor: yes/no PROXY"
        ),
        base_model="smollm2-135m-instruct",
        data=DATA_DIR_PREFIX + "hh-rlhf?subsets=helpful-base,harmless-base&split=test",
        split_sizes=(128, 16, 32),
        split_seed=0,
        generation=GenerationConfig(max_new_tokens=64),
        training=dict(MINI_TRAINING),
        scorers={
            "helpful": MINI_HELPFUL_SCORER,
            "harmless": MINI_HARMLESS_SCORER,
            # no real humor preference data is available offline: a clearly labelled proxy
            "humor": "yesno:smollm2-135m-instruct",
        },
        # trained scorers are standardised (held-out mean 0, std 1); the proxy is in [0, 1]
        hv_ref_point=(-2.0, -2.0, 0.0),
        grid="mod13",
        batch_size=26,
        task_options={"relabel": "all", "part": "task", "shuffle_responses": True},
    )
)

register_preset(
    Preset(
        name="paper",
        task="helpful",
        description=(
            "GPU, hub: HH-RLHF (helpful-base + harmless-base train) relabelled by the GPT-2 "
            "helpful/harmless reward models and the humor classifier, 10K/1K/1K, TinyLlama-1.1B-"
            "Chat ARMs guiding LLaMA-2-7B-Chat, MOD's 13 alphas, 512 new tokens (METHODS §7.2)"
        ),
        base_model=LLAMA2_7B_CHAT,
        guide_model=TINYLLAMA_CHAT,
        data=HH_HUB + "?subsets=helpful-base,harmless-base&split=train",
        split_sizes=(10000, 1000, 1000),
        split_seed=0,
        # MOD used 128 new tokens on this task; PARM's value is unknown (METHODS §7.2)
        generation=GenerationConfig(max_new_tokens=512, sampling=False, beta=1.0),
        training={},  # each method's own (official-code) defaults
        scorers={
            "helpful": "seqcls:Ray2333/gpt2-large-helpful-reward_model",
            "harmless": "seqcls:Ray2333/gpt2-large-harmless-reward_model",
            "humor": "seqcls-logit1:mohameddhiab/humor-no-humor",
        },
        # PROVISIONAL (METHODS §8.3): below typical GPT-2 reward and humor-logit values
        hv_ref_point=(-5.0, -5.0, -5.0),
        grid="mod13",
        dtype="auto",
        batch_size=26,
        task_options={"relabel": "all", "shuffle_responses": True},
    )
)
