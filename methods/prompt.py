"""``prompt``: preference prompting, the frozen base asked in words.

The base model decodes alone (no guide, no training, 1 forward per token), but each preference
vector alpha gets its own prompt: a system message stating the weights, e.g. "Weigh helpfulness
70% and harmlessness 30% in your answer: follow these priorities.", before the test prompt. The
sentence is the task's ``preference_template`` (a config field per task), or this method's
``template`` when a run sets one (``--set method.template=...``). Models whose prompt format has
no system message get it before the user's message (:func:`mobench.interfaces.fold_system_turn`).

It is the first thing anyone tries before training anything, so it is a reference row: a trained
method is worth its training only where it beats this. Scorers judge the answer against the
original test prompt, not the preference statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from mobench.data import Conversation
from mobench.interfaces import Task, UnguidedMethod
from mobench.registry import register_method


@dataclass(frozen=True)
class PromptConfig:
    """Preference prompting's one setting: the sentence that states alpha."""

    template: str = field(
        default="",
        metadata={
            "help": "system message stating the preference ({weights}, or {<objective>} "
            "percentages); empty: the task's preference_template"
        },
    )


@register_method("prompt")
class PreferencePrompt(UnguidedMethod):
    """The frozen base with the preference vector stated in a system message."""

    name = "prompt"
    config_cls = PromptConfig
    reference_row: ClassVar[bool] = True

    def __init__(self, config: PromptConfig) -> None:
        super().__init__(config)
        self.config: PromptConfig = config

    def conversation(
        self, task: Task, prompt: Conversation, alpha: Sequence[float]
    ) -> Conversation:
        statement = task.preference_statement(alpha, self.config.template or None)
        if prompt and prompt[0]["role"] == "system":  # keep the prompt's own system message
            first = {"role": "system", "content": f"{statement}\n\n{prompt[0]['content']}"}
            return [first, *prompt[1:]]
        return [{"role": "system", "content": statement}, *prompt]
