"""Safety alignment on PKU-SafeRLHF: helpful vs harmless (METHODS §7.1).

Objectives, in alpha order: ("helpful", "harmless"). Labels: better_response_id -> helpful,
safer_response_id -> harmless. Scores are "higher is better" (harmless = -cost for the beaver
cost model).

Data (see :mod:`mobench.tasks.sources` for the string grammar):

* hub: ``PKU-Alignment/PKU-SafeRLHF-10K`` (the papers' release, train split; the ``paper``
  preset's default), or the v1 release ``PKU-Alignment/PKU-SafeRLHF`` with ``?config=alpaca-7b``
  etc.; ``@REVISION`` pins a revision, ``?split=test`` picks another split;
* a local .json/.jsonl/.jsonl.gz/.parquet file in the v0 ("10K") or v1 schema;
* ``builtin:safety_tiny.jsonl`` (140 hand-written pairs, the ``tiny`` preset).

Rows are prepared by :class:`~mobench.tasks.preference.PreferenceTask` (partition, order,
seeded split, PARM's 1024-character training filter, relabelling with the preset's scorers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mobench.tasks.formats import load_pku_file, pku_record_to_pair
from mobench.tasks.preference import PreferenceTask
from mobench.tasks.sources import load_hub_rows, parse_data_string

from mobench.config import ConfigError, GenerationConfig, Preset
from mobench.data import DATA_DIR_PREFIX, DataError, PreferencePair
from mobench.registry import register_preset, register_task

if TYPE_CHECKING:
    from mobench.config import RunSpec

#: the safe-rlhf template of Alpaca-7B and the beaver models (METHODS §7.1)
SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
#: the Alpaca instruction template of the weak-to-strong base alpaca-lora-65B (METHODS §7.1)
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{prompt}\n\n### Response:\n"
)

PKU_10K = "PKU-Alignment/PKU-SafeRLHF-10K"
ALPACA_7B = "PKU-Alignment/alpaca-7b-reproduced"
ALPACA_65B_GPTQ = "TheBloke/alpaca-lora-65B-GPTQ"
#: where a local data folder (``--data-dir``) keeps PKU-SafeRLHF files
LOCAL_FOLDER = "pku-saferlhf"
_SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".parquet")


def read_pku_source(data: str) -> tuple[list[PreferencePair], dict[str, Any]]:
    """The rows of a PKU-SafeRLHF data string (before any preparation), and where they came
    from."""
    source = parse_data_string(data, SafetyTask.source_options)
    if source.kind == "hub":
        split = source.options.get("split", "train")
        records = load_hub_rows(source, split=split, name=source.options.get("config"))
        where = f"{source.location}[{split}]"
        rows = [pku_record_to_pair(rec, i, where) for i, rec in enumerate(records, start=1)]
        return rows, {"source": data, "kind": "hub", "split": split}
    if source.options:
        raise DataError(
            f"data '{data}': ?{', '.join(source.options)} applies to hub data sets only"
        )
    if source.path.is_dir():
        raise DataError(f"{source.path} is a folder; pass one PKU-SafeRLHF file")
    return load_pku_file(source.path), {"source": data, "kind": source.kind}


def load_pku_source(data: str) -> list[PreferencePair]:
    """The rows of a PKU-SafeRLHF data string: a hub id, a local file or ``builtin:NAME``."""
    return read_pku_source(data)[0]


@register_task("safety")
class SafetyTask(PreferenceTask):
    """PKU-SafeRLHF safety alignment: helpful vs harmless."""

    name = "safety"
    objectives = ("helpful", "harmless")
    objective_phrases: ClassVar[dict[str, str]] = {
        "helpful": "helpfulness",
        "harmless": "harmlessness",
    }
    source_options = ("split", "config")

    def read_rows(self, spec: RunSpec) -> tuple[list[PreferencePair], dict[str, Any]]:
        return read_pku_source(spec.data)

    @classmethod
    def local_data(cls, data_dir: Path, data: str) -> str:
        """``PKU-Alignment/NAME`` -> ``DIR/pku-saferlhf/NAME.{jsonl.gz,jsonl,json,parquet}``."""
        source = parse_data_string(data, cls.source_options)
        if source.kind != "hub":
            return data
        folder = Path(data_dir) / LOCAL_FOLDER
        name = source.location.split("/")[-1]
        for suffix in _SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return str(folder / f"{name}{suffix}")
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise ConfigError(
            f"no local copy of {source.location} in {folder} (looked for {name}"
            f"{{{','.join(_SUFFIXES)}}}); found: {', '.join(found) or 'nothing'}; pass one of "
            "them with --data FILE, or use the mini preset"
        )

    def default_template(self) -> str:
        return SAFE_RLHF_TEMPLATE


# ------------------------------------------------------------------------------------ presets

#: ARM training sizes for the tiny presets (minutes on 2 CPU cores with SmolLM2-135M)
TINY_TRAINING = {
    "max_steps": 24,
    "per_device_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "warmup_steps": 2,
    "max_length": 256,
    "max_prompt_length": 160,
}

register_preset(
    Preset(
        name="tiny",
        task="safety",
        description=(
            "CPU, offline, minutes: SmolLM2-135M-Instruct as base and guide backbone, 140 "
            "hand-written PKU-style pairs, SmolLM2 yes/no PROXY scorers"
        ),
        base_model="smollm2-135m-instruct",
        data="builtin:safety_tiny.jsonl",
        split_sizes=(116, 8, 16),
        split_seed=0,
        test_limit=8,
        generation=GenerationConfig(max_new_tokens=48),
        training=dict(TINY_TRAINING),
        scorers={
            "helpful": "yesno:smollm2-135m-instruct",
            "harmless": "yesno:smollm2-135m-instruct",
        },
        # proxy scores are probabilities in [0, 1]
        hv_ref_point=(0.0, 0.0),
        batch_size=22,
    )
)

#: the mini presets' scorers (shared by both tasks, so each is fitted once), each on the "scorer"
#: half of the first-user-turn partition (the tasks use the other half). Helpfulness: a reward
#: model trained on HH helpful-base (it also supplies the ARMs' missing helpful labels).
MINI_HELPFUL_SCORER = (
    "trained:smollm2-135m-instruct?data=" + DATA_DIR_PREFIX + "hh-rlhf/helpful-base/test.jsonl.gz"
)
#: Harmlessness: a probe (a Bradley-Terry head on frozen SmolLM2-135M-Instruct features after
#: layer 20, averaged over the response) fitted on PKU's human safer labels. In 5-fold
#: cross-validation on the scorer half, response pooling with l2 = 1 at layers 16-27 lead
#: (0.712-0.718, within fold noise of each other; layer 20 was first under an earlier fold
#: draw and was kept). On the same 300 task-half PKU pairs the
#: trained (LoRA) harmless scorer it replaces picked the safe response in 166 (0.55, near
#: chance), this probe in 227 (0.76); benchmarks/scorers/probe-study-20261130.json
MINI_HARMLESS_SCORER = (
    "probe:smollm2-135m-instruct?data="
    + DATA_DIR_PREFIX
    + "pku-saferlhf/pku_saferlhf_test_safety_pairs_5135.jsonl.gz"
    + "&train_pairs=600&heldout_pairs=200&layer=20&pool=response&l2=1"
)
#: ARM training sizes for the mini presets (2 CPU cores, SmolLM2-135M, bf16 where native)
MINI_TRAINING = {
    "epochs": 1.0,
    "per_device_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "warmup_steps": 4,
    "max_length": 192,
    "max_prompt_length": 128,
}
#: the safety mini preset's: 32 updates of 8 pairs from 384 training pairs at lr 2e-3. At the
#: official lr 5e-4 and 16 updates the guides barely moved (the same answer for most alphas,
#: refusal rate flat; benchmarks/steering/safety-mini-pilots-20261130.json); PKU
#: prompts are short, and 160 tokens keep most responses whole
SAFETY_MINI_TRAINING = {
    **MINI_TRAINING,
    "max_steps": 32,
    "learning_rate": 2e-3,
    "max_length": 160,
    "max_prompt_length": 64,
}
#: one beta_r for both objectives of GenARM's two ARMs. GenARM's PKU script uses helpful 0.5 and
#: harmless 0.01 (PARM 0.01 for both) for 512-token responses of a 7B model; at a 50x ratio the
#: two ARMs of one run are trained at different strengths, so alpha trades one objective against
#: an ARM's training strength rather than against the other objective
MINI_ARM_BETA_R = {"helpful": 0.1, "harmless": 0.1}
#: PARM and UniARM learn the alpha-conditioned part of one adapter from alpha-weighted losses
#: (each objective's signal weighs alpha_i ~ Dirichlet(0.5) per micro-batch): at 32 updates of
#: lr 2e-3 PARM's answers did not move with alpha; 48 updates at 5e-3 moved them. With GenARM's
#: beta_r 0.1 PARM's harmlessness followed alpha only inside its noise (span 0.25 vs 0.34; 128
#: updates: 0.25 vs 0.29); PARM's official 0.01 (its default, METHODS §4.2) took it beyond
#: (0.57 vs 0.35): summed log-probs of two responses differ by ~50-90 nats, so at 0.1 the
#: Bradley-Terry loss saturates on most pairs (pilots:
#: benchmarks/steering/safety-mini-pilots-20261130.json).
#: So they keep their default beta_r (PARM's; UniARM shares PARM's training settings)
MINI_PREFERENCE_ARM_TRAINING = {"learning_rate": 5e-3, "max_steps": 64}
#: the per-objective DPO policies of RS, MOD and MOD-w2s (one shared training, so one setting for
#: all three): MOD's LoRA r 64 with lora_alpha 1 scales the update by 1/64, which at 32 updates
#: left the policies at the base; r 8 with lora_alpha 16 (scale 2, GenARM's) moves them
MINI_DPO_POLICY_TRAINING = {"lora_r": 8, "lora_alpha": 16}

register_preset(
    Preset(
        name="mini",
        task="safety",
        description=(
            "CPU, offline, < 1 h (needs --data-dir): SmolLM2-135M-Instruct base and ARM "
            "backbone on the real PKU-SafeRLHF test pairs (5135-row file): PKU's human harmless "
            "labels; helpful labels and scores from a SmolLM2 reward model mobench trains on real "
            "HH-RLHF pairs; harmless scores from a frozen-SmolLM2 probe fitted on PKU's safer "
            "labels"
        ),
        base_model="smollm2-135m-instruct",
        data=DATA_DIR_PREFIX + "pku-saferlhf/pku_saferlhf_test_safety_pairs_5135.jsonl.gz",
        # 64 test prompts: with 32, one point's 95% interval was 0.5-0.8 standard deviations
        # wide, wider than most fronts' span
        split_sizes=(384, 16, 64),
        split_seed=0,
        generation=GenerationConfig(max_new_tokens=64),
        training=dict(SAFETY_MINI_TRAINING),
        method_training={
            "genarm": {"beta_r": dict(MINI_ARM_BETA_R)},
            **{m: dict(MINI_PREFERENCE_ARM_TRAINING) for m in ("parm", "uniarm")},
            **{m: dict(MINI_DPO_POLICY_TRAINING) for m in ("rs", "mod", "mod_w2s")},
        },
        scorers={"helpful": MINI_HELPFUL_SCORER, "harmless": MINI_HARMLESS_SCORER},
        # trained scorers are standardised (held-out mean 0, std 1)
        hv_ref_point=(-2.0, -2.0),
        batch_size=22,
        task_options={
            # harmless: PKU's human safer label as it is (relabelling it with the 0.61-accurate
            # trained scorer replaced human labels with noisy ones); helpful: the file has no
            # label, so the helpful reward model (trained on human HH labels) supplies it
            "relabel": "missing",
            "part": "task",
            "shuffle_responses": True,  # the file puts the safe response first
            "train_max_chars": 1024,
        },
    )
)

register_preset(
    Preset(
        name="paper",
        task="safety",
        description=(
            "GPU, hub: PKU-SafeRLHF-10K relabelled by beaver-7b-v1.0 reward/cost, 8000/500/1500, "
            "Alpaca-7B base and ARM init, 512 new tokens, greedy, beta 1 (METHODS §7.1)"
        ),
        base_model=ALPACA_7B,
        data=PKU_10K,
        split_sizes=(8000, 500, 1500),
        split_seed=0,
        generation=GenerationConfig(max_new_tokens=512, sampling=False, beta=1.0),
        training={},  # each method's own (official-code) defaults
        scorers={
            "helpful": "beaver-reward:PKU-Alignment/beaver-7b-v1.0-reward",
            "harmless": "beaver-cost:PKU-Alignment/beaver-7b-v1.0-cost",
        },
        # PROVISIONAL: the papers' z is unknown (METHODS §8.3); a point below typical beaver
        # scores. The report recomputes HV with one common reference point.
        hv_ref_point=(-15.0, -15.0),
        dtype="auto",
        batch_size=22,
        templates={ALPACA_7B: SAFE_RLHF_TEMPLATE},
        task_options={"relabel": "all", "train_max_chars": 1024},
    )
)

register_preset(
    Preset(
        name="paper-w2s",
        task="safety",
        description=(
            "GPU, hub, weak-to-strong: Alpaca-7B ARM(s) guide alpaca-lora-65B (4-bit GPTQ; "
            "needs a GPTQ backend such as gptqmodel), otherwise as paper (METHODS §7.1)"
        ),
        base_model=ALPACA_65B_GPTQ,
        guide_model=ALPACA_7B,
        data=PKU_10K,
        split_sizes=(8000, 500, 1500),
        split_seed=0,
        generation=GenerationConfig(max_new_tokens=512, sampling=False, beta=1.0),
        training={},
        scorers={
            "helpful": "beaver-reward:PKU-Alignment/beaver-7b-v1.0-reward",
            "harmless": "beaver-cost:PKU-Alignment/beaver-7b-v1.0-cost",
        },
        hv_ref_point=(-15.0, -15.0),
        dtype="auto",
        batch_size=11,
        # each model gets its training template (METHODS §10.5)
        templates={ALPACA_65B_GPTQ: ALPACA_TEMPLATE, ALPACA_7B: SAFE_RLHF_TEMPLATE},
        task_options={"relabel": "all", "train_max_chars": 1024},
    )
)
