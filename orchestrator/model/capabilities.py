"""Which chat types and tasks a model serves, as vLLM's probe says, beside which a profile runs.

The served side comes from the probe's facts (probes/model_facts.py: the tasks of the model class,
the modalities and per-prompt limits of its processor); without facts (a named profile, never probed)
it is unknown, None, not empty. The run side is the profile's demos. `mmdemo plan`, `mmdemo models`
and report.json show both (record.report.Capabilities).
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.core.chattypes import CHAT_TYPE_NEEDS, ChatType
from orchestrator.core.tasks import Task
from orchestrator.model.derive import chats_served
from orchestrator.record.report import Capabilities, Offered
from orchestrator.vllm.probe import ModelFacts


def served_chat_types(facts: ModelFacts) -> list[ChatType]:
    """The chat types whose inputs the model takes (its modalities, enough items per prompt); none for a
    model that serves no chat. Whether each prompt fits the context is the derivation's question."""
    if not chats_served(facts):
        return []
    served = []
    for chat, need in CHAT_TYPE_NEEDS.items():
        if need is None:
            served.append(chat)
            continue
        modality, count = need
        if modality in facts.modalities and (facts.modalities[modality] or count) >= count:
            served.append(chat)
    return served


def served_tasks(facts: ModelFacts) -> list[Task]:
    """The tasks past chat the model serves (transcription, embedding, responses, ...), in vLLM's order."""
    names = {t.value for t in Task}
    return [Task(t) for t in facts.tasks if t in names]


def capabilities(facts: ModelFacts | None, chats: Sequence[ChatType], tasks: Sequence[Task]) -> Capabilities:
    """What the model serves (None without facts) and what the run sends, by name, each once."""
    return Capabilities(
        chat_types=Offered(
            served=None if facts is None else [c.value for c in served_chat_types(facts)],
            run=list(dict.fromkeys(c.value for c in chats)),
        ),
        tasks=Offered(
            served=None if facts is None else [t.value for t in served_tasks(facts)],
            run=list(dict.fromkeys(t.value for t in tasks)),
        ),
    )


def line(names: Sequence[str] | None, run: Sequence[str]) -> str:
    """`a, b (run), c` for one row of the table (record.report.Offered.shown says how)."""
    return Offered(served=None if names is None else list(names), run=list(run)).shown()
