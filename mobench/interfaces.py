"""The few interfaces where mobench's parts meet: Task, Scorer, Guide, Method.

Everything method- or task-specific lives behind these; the core (decoding, runs, metrics,
report) only ever talks to them. Heavy libraries are imported lazily so that ``mobench --help``
and ``mobench ls`` stay fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mobench.data import Conversation, Splits

if TYPE_CHECKING:
    import torch

    from mobench.config import RunSpec
    from mobench.engine import GuideSpec
    from mobench.models import ModelContext
    from mobench.training import TrainerSettings


class Scorer(ABC):
    """A reward model for one objective. Scores are "higher is better" after the task's sign
    convention (e.g. harmless = -cost)."""

    objective: str
    #: identifies the model and its version; written next to every score so that scores from
    #: different scorers are never mixed.
    fingerprint: str

    @abstractmethod
    def score(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> np.ndarray:
        """Return a float array of shape ``(N,)``: one score per (prompt, response) pair."""

    @property
    def info(self) -> dict[str, Any]:
        """Facts about the scorer worth keeping with a run (e.g. a trained scorer's held-out
        pair accuracy); written to the run's ``scorers.json``."""
        return {}


class Guide(ABC):
    """Per-row guidance log-probs for the next token, as the decoding loop consumes them.

    The engine (:mod:`mobench.engine`) builds one from a method's :meth:`Method.guide_spec`;
    methods do not implement this. The decoding loop owns the base model; a guide owns its own
    models and KV caches. Rows are (prompt, alpha) pairs; rows leave the batch when they finish
    (:meth:`drop`).
    """

    #: per generated token, how many forward passes each model makes (e.g.
    #: ``{"guide": 2}`` for GenARM with two separate ARMs); recorded in timing.json.
    forwards_per_token: dict[str, int]
    #: rows per batch row in each of those forwards (e.g. 2 when GenARM's two ARMs run as two
    #: lanes of one forward of a shared backbone); recorded in timing.json as ``guide_lanes``.
    lanes: int = 1
    #: the guidance is the whole next-token score (MOD, Rewarded Soups): the decoding loop then
    #: runs no base model and does not add log pi_base (nor divide by beta)
    replaces_base: bool = False

    @abstractmethod
    def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
        """Encode the prompts (each rendered with the guide model's own template) and return the
        guidance for the first new token, shape ``(B, V)`` in fp32, V = the shared vocabulary.

        Args:
            prompt_ids: one token-id list per row, not padded.
            alphas: ``(B, K)`` preference vectors, one per row, in the task's objective order.
        """

    @abstractmethod
    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed the tokens just chosen, ``(B,)``, and return the next guidance ``(B, V)``."""

    @abstractmethod
    def drop(self, keep: torch.Tensor) -> None:
        """Keep only the rows at the indices ``keep`` (a 1-D long tensor), in that order."""


class FusedGuide(ABC):
    """A guide that shares the base model's own weights and runs the base rows in the same
    forward as its guide rows (ARCHITECTURE "Performance design": one read of the weights per
    token, one copy of the backbone in memory).

    The decoding loop then runs no base model of its own: each call returns the base log-probs
    and the guidance, and the loop combines them exactly as for a :class:`Guide`
    (``base + guidance / beta``). The engine builds one when the guide model is the base model
    (``ModelContext.fused``); with a different guide model it builds a plain :class:`Guide`.
    """

    #: as :attr:`Guide.forwards_per_token`; the fused forward is counted under "fused".
    forwards_per_token: dict[str, int]
    #: rows per batch row in the fused forward (e.g. 1 + k for the base and k ARMs).
    lanes: int

    @abstractmethod
    def prefill(
        self, prompt_ids: list[list[int]], guide_prompt_ids: list[list[int]], alphas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the prompts (base template and guide template) and return ``(base log-probs,
        guidance)`` for the first new token, each ``(B, V)`` fp32."""

    @abstractmethod
    def step(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the tokens just chosen, ``(B,)``; return the next ``(base log-probs, guidance)``."""

    @abstractmethod
    def drop(self, keep: torch.Tensor) -> None:
        """Keep only the rows at the indices ``keep`` (a 1-D long tensor), in that order."""


class Task(ABC):
    """A preference data set with its objectives, scorers, prompt rendering and alpha grid."""

    name: ClassVar[str]
    #: order = alpha order, e.g. ("helpful", "harmless")
    objectives: ClassVar[tuple[str, ...]]
    #: preference prompting (the ``prompt`` method): the system message that states alpha.
    #: ``{weights}`` becomes e.g. "helpfulness 70% and harmlessness 30%", and ``{<objective>}``
    #: that objective's percentage; a run may replace it (``--set method.template=...``)
    preference_template: ClassVar[str] = "Weigh {weights} in your answer: follow these priorities."
    #: how the preference statement names each objective (default: the objective's own name)
    objective_phrases: ClassVar[dict[str, str]] = {}
    #: the task's data options and their defaults (a preset's ``task_options`` and
    #: ``--set task.KEY=VALUE`` override them; unknown keys are refused)
    default_options: ClassVar[dict[str, Any]] = {}

    @classmethod
    def local_data(cls, data_dir: Path, data: str) -> str:
        """The data string that reads ``data`` (a hub source) from a local copy in ``data_dir``.

        Raises:
            ConfigError: the task has no local layout, or the copy lacks the files.
        """
        from mobench.config import ConfigError

        raise ConfigError(
            f"task '{cls.name}' cannot read its data from --data-dir; pass --data FILE"
        )

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise :class:`~mobench.config.ConfigError` for a bad value in the task's options
        (``options`` already holds every key of ``default_options``). Default: any value."""
        return None

    def describe_data(self, spec: RunSpec) -> dict[str, Any]:
        """What :meth:`load` would read and do, WITHOUT reading it (``mobench run --dry-run``)."""
        return {"source": spec.data}

    @abstractmethod
    def load(self, spec: RunSpec) -> Splits:
        """Load the spec's data source and split it (seeded, sizes from the spec)."""

    @abstractmethod
    def scorers(self, spec: RunSpec, device: str) -> dict[str, Scorer]:
        """One scorer per objective, keyed by objective name."""

    def scorer_identity(self, spec: str, objective: str) -> str:
        """What the preset's scorer string ``spec`` stands for (the identity of its weights),
        without loading it; it enters the run's spec. Default: mobench's ``KIND:SOURCE``
        scorers (:func:`mobench.tasks.scorers.scorer_identity`); a task that builds its own
        scorers from other strings overrides this."""
        from mobench.tasks.scorers import scorer_identity

        return scorer_identity(spec, objective)

    def preference_statement(self, alpha: Sequence[float], template: str | None = None) -> str:
        """``template`` (default: :attr:`preference_template`) filled with ``alpha`` (in the
        task's objective order) as percentages.

        Raises:
            ConfigError: the template names a field that is neither ``weights`` nor an objective.
        """
        from mobench.config import ConfigError

        percent = {o: f"{100 * float(a):.0f}%" for o, a in zip(self.objectives, alpha, strict=True)}
        parts = [f"{self.objective_phrases.get(o, o)} {percent[o]}" for o in self.objectives]
        weights = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        try:
            return (template or self.preference_template).format(weights=weights, **percent)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"preference template {template!r}: {e!r}; use {{weights}} or the objective "
                f"names {', '.join('{' + o + '}' for o in self.objectives)}"
            ) from None

    def render(self, prompt: Conversation, tokenizer: Any, template: str | None = None) -> str:
        """The prompt as text for one model: ``template`` if given (a ``str.format`` pattern with
        ``{prompt}``), else the tokenizer's chat template, else the task's default template.
        A leading system turn (preference prompting) is the chat template's system message, and
        is put before the user's message where a template has no place for it."""
        if template is not None:
            return template.format(prompt=_last_user_turn(fold_system_turn(prompt)))
        if getattr(tokenizer, "chat_template", None):
            return str(
                tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            )
        return self.default_template().format(prompt=_last_user_turn(fold_system_turn(prompt)))

    def default_template(self) -> str:
        """Template for models without a chat template; ``{prompt}`` is the user's message."""
        return "{prompt}\n"

    def postprocess(self, response: str) -> str:
        """Clean a generated response before scoring (e.g. cut a hallucinated next turn)."""
        return response


def fold_system_turn(prompt: Conversation) -> Conversation:
    """The conversation without a leading system turn, its text put before the first user
    message (``"{system}\n\n{user}"``): for prompt formats with no system message (single-turn
    templates, HH's Human/Assistant format). Conversations without one are returned as they are."""
    if not prompt or prompt[0]["role"] != "system":
        return prompt
    system, rest = prompt[0]["content"], list(prompt[1:])
    for k, turn in enumerate(rest):
        if turn["role"] == "user":
            rest[k] = {**turn, "content": f"{system}\n\n{turn['content']}"}
            return rest
    raise ValueError("a prompt must contain at least one user turn")


def _last_user_turn(prompt: Conversation) -> str:
    for turn in reversed(prompt):
        if turn["role"] == "user":
            return turn["content"]
    raise ValueError("a prompt must contain at least one user turn")


class Method(ABC):
    """A multi-objective test-time alignment method: trains a guide, then builds it for decoding.

    Subclasses set ``name`` and ``config_cls`` (a dataclass whose fields document their defaults
    and sources) and are registered with :func:`mobench.registry.register_method`.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type]
    #: False for a method with nothing to train (``base``, prompting): the pipeline then skips
    #: the training step and the preset's ``training`` sizes, which are for trained guides.
    trains: ClassVar[bool] = True
    #: False for a reference row that is not meant to follow alpha (``base``): its flat front
    #: is expected, so the report marks it as a reference instead of warning that it does not
    #: steer.
    steers: ClassVar[bool] = True
    #: True for a method whose guidance REPLACES the base model's distribution (MOD, Rewarded
    #: Soups: its guide spec says ``replaces_base``): its guide sits on the base model and the
    #: decoding loop runs no base forward; False: the guidance is added to log pi_base
    replaces_base: ClassVar[bool] = False
    #: a reference row of the leaderboard (the unguided base, preference prompting): what a
    #: trained method must beat, shown apart from the trained methods
    reference_row: ClassVar[bool] = False
    #: methods of one family train the same guide (same config class, same training), so the
    #: guide cache trains it once for all of them (e.g. MOD, Rewarded Soups and MOD-w2s share
    #: their per-objective DPO policies); None: the method's own guide
    guide_family: ClassVar[str | None] = None

    def __init__(self, config: Any) -> None:
        self.config = config

    @abstractmethod
    def train(
        self,
        task: Task,
        splits: Splits,
        spec: RunSpec,
        out_dir: Path,
        trainer: TrainerSettings | None = None,
    ) -> None:
        """Train the guide on ``splits.train`` and save everything :meth:`guide_spec` needs
        (weights in safetensors, a config recording the objective order) into ``out_dir``.
        ``trainer`` (extra TrainingArguments, a progress hook) goes to the trainer as is."""

    @abstractmethod
    def guide_spec(self, artifacts: Path, task: Task, models: ModelContext) -> GuideSpec | None:
        """What the trained guide in ``artifacts`` is at decoding time: its lanes (the guide
        backbone, with a LoRA or an alpha-conditioned adapter each) and their linear weights per
        row (:class:`mobench.engine.GuideSpec`). None decodes the base model alone. The core
        decides how the lanes run (fused, weak-to-strong, separate); a method writes no speed
        code."""

    def guide(self, artifacts: Path, task: Task, models: ModelContext) -> Guide | FusedGuide | None:
        """The guide for ``models``, built by the core's engine from :meth:`guide_spec`: a
        :class:`FusedGuide` on ``models.base`` when ``models.fused``, else a :class:`Guide`."""
        spec = self.guide_spec(artifacts, task, models)
        if spec is None:
            return None
        if spec.replaces_base != self.replaces_base:
            raise TypeError(
                f"method {self.name}: its guide spec says replaces_base={spec.replaces_base} but "
                f"the method declares replaces_base={self.replaces_base}; make them agree"
            )
        from mobench.engine import build_guide

        return build_guide(spec, models)

    @abstractmethod
    def trainable_parameters(self, artifacts: Path) -> int:
        """Number of trained parameters in the saved guide (the papers compare these)."""

    @classmethod
    def relation_to_base(cls) -> str:
        """How the method uses the frozen base model, for the leaderboard: its guidance is added
        to the base's log-probs, replaces them, or there is no guide (the base decodes alone,
        possibly with another prompt)."""
        if cls.replaces_base:
            return "replaces the base"
        return "guides the base" if cls.trains else "decodes the base"

    def conversation(
        self, task: Task, prompt: Conversation, alpha: Sequence[float]
    ) -> Conversation:
        """The conversation the base model is asked for the preference vector ``alpha`` (in the
        task's objective order): the test prompt itself, except for methods that state the
        preference in the prompt (``prompt``). Scorers always see the original test prompt."""
        return prompt

    @classmethod
    def estimated_forwards_per_token(cls, spec: RunSpec) -> dict[str, int] | None:
        """Forward passes per generated token by model ("base", "guide", ...), when known
        without loading anything (``mobench run --dry-run`` uses it); None = unknown."""
        return None

    def random_guide(self, task: Task, models: ModelContext, out_dir: Path, seed: int) -> None:
        """Save, like :meth:`train`, a guide with the trained shapes but random weights (every
        adapter's output non-zero), for ``mobench bench``: decoding cost does not depend on
        training. Methods that do not implement it are left out of the benchmark."""
        raise NotImplementedError(f"method {self.name} has no random_guide (mobench bench)")


class UnguidedMethod(Method):
    """A method that decodes the frozen base with no guide and trains nothing (``base``,
    preference prompting): the plumbing every such method shares."""

    trains: ClassVar[bool] = False

    def train(
        self,
        task: Task,
        splits: Splits,
        spec: RunSpec,
        out_dir: Path,
        trainer: TrainerSettings | None = None,
    ) -> None:
        """Nothing to train (the pipeline does not call this for a method with ``trains``
        False; kept so the class satisfies the interface)."""

    def guide_spec(self, artifacts: Path, task: Task, models: ModelContext) -> None:
        return None

    def trainable_parameters(self, artifacts: Path) -> int:
        return 0

    @classmethod
    def estimated_forwards_per_token(cls, spec: RunSpec) -> dict[str, int] | None:
        return {"base": 1}
