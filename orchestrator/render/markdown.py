"""report.md: a table a person pastes into an issue, safe whatever the model said."""

from __future__ import annotations

from orchestrator.record.report import AssetRecord, DemoRecord, RunRecord, VllmRecord
from orchestrator.render.text import code_fence, markdown_cell, one_line, visible

VERDICTS = {"passed": "✅ passed", "failed": "❌ failed"}
DEMO_MARKS = {"passed": "✅", "failed": "❌", "hung": "⏳"}


def fmt(value: float | int | None, unit: str = "", digits: int = 2) -> str:
    """A number for a table, or an en dash when there is none."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def demo_label(demo: DemoRecord) -> str:
    """understood / answered / failed, with the missing words and the distractors named."""
    if demo.verdict == "understood":
        return "understood"
    if demo.missing or demo.distractors:
        return "failed: " + checked(demo)
    return demo.verdict


def checked(demo: DemoRecord) -> str:
    """'missing red; names blue|navy': what a failed check found (the answer goes beside it)."""
    parts = []
    if demo.missing:
        parts.append("missing " + ", ".join("|".join(group) for group in demo.missing))
    if demo.distractors:
        parts.append("names " + ", ".join("|".join(group) for group in demo.distractors))
    return "; ".join(parts)


def failed_line(demo: DemoRecord, limit: int | None = None) -> str:
    """A failed check and the answer beside it, on one line (visible: no control bytes)."""
    return f'{checked(demo)} — answer: "{one_line(demo.answer, limit)}"'


def media_lines(record: RunRecord) -> list[str]:
    """Each medium the demos sent, once: where it came from and, for known media, its truth."""
    seen: dict[str, AssetRecord] = {}
    for demo in record.demos:
        for asset in demo.assets:
            seen.setdefault(asset.key, asset)
    if not seen:
        return []
    lines = ["| medium | kind | source | truth | why |", "|---|---|---|---|---|"]
    for asset in seen.values():
        lines.append(
            f"| {markdown_cell(asset.key)} | {markdown_cell(asset.kind)} "
            f"| {markdown_cell(asset.provenance)} | {markdown_cell(asset.truth or '–')} "
            f"| {markdown_cell(asset.reason or '–', 120)} |"
        )
    return [*lines, ""]


def environment(vllm: VllmRecord) -> str:
    """'; torch 2.13.0, transformers 5.19; decoders: soundfile, av' where the record knows them."""
    parts = [
        f"{name} {markdown_cell(v, None)}"
        for name, v in (("torch", vllm.torch), ("transformers", vllm.transformers))
        if v
    ]
    if vllm.torch or vllm.decoders:
        parts.append(
            "decoders: " + (", ".join(markdown_cell(d, None) for d in vllm.decoders) or "none found")
        )
    return "; " + ", ".join(parts) if parts else ""


def to_markdown(record: RunRecord) -> str:
    """The whole report.md."""
    summary = record.summary
    vllm = record.vllm
    teardown = record.teardown
    verdict = VERDICTS.get(record.status, f"⚠️ {record.status}")
    lines = [
        f"# mmdemo: {markdown_cell(record.profile, None)} on {markdown_cell(record.variant, None)} — {verdict}",
        "",
        f"- model: {markdown_cell(record.model, None)} (served as {markdown_cell(record.served_model_name, None)})",
        f"- vLLM: {markdown_cell(vllm.version, None)} ({markdown_cell(vllm.path, None)})" + environment(vllm)
        if vllm
        else "- vLLM: ?",
        f"- machine: {markdown_cell(record.machine.accelerator, None)}; {markdown_cell(record.machine.cpu, None)}",
        f"- time to ready: {fmt(record.server.ready_s, ' s', 1)}",
        f"- demos: {summary.passed}/{summary.total} passed"
        + (f", {summary.understood} understood" if any(d.expected for d in record.demos) else "")
        + (f", {summary.hung} hung" if summary.hung else ""),
    ]
    if (caps := record.capabilities) is not None and (caps.chat_types.run or caps.tasks.run):
        lines.append(
            f"- chat types: {markdown_cell(caps.chat_types.shown(), None)}; "
            f"tasks: {markdown_cell(caps.tasks.shown(), None)}"
        )
    if record.flags:
        lines.append(f"- options: {', '.join(markdown_cell(f, None) for f in record.flags)}")
    if teardown:
        lines.append(f"- teardown: {fmt(teardown.duration_s, ' s')}, {teardown.remaining} process(es) left")
    if (budget := record.budget) is not None:
        counted = [d.prompt_tokens + d.completion_tokens for d in budget.demos if d.prompt_tokens is not None]
        most = f"; the largest needs {max(counted)} of {fmt(budget.max_model_len)} tokens" if counted else ""
        lines.append(
            f"- budget: {len(budget.demos)} requests counted before launch by vLLM "
            f"{markdown_cell(budget.vllm, None)}'s renderer{most}"
        )
    lines.append("")
    if record.warnings:
        lines += ["**Warnings (the budget before launch, vLLM's start-up):**", ""]
        lines += [f"- {markdown_cell(w, None)}" for w in record.warnings]
        lines.append("")
    if record.error:
        err = record.error
        lines += [f"**Error:** {markdown_cell(err.message, None)}", ""]
        if err.diagnosis:
            lines += [f"**Diagnosis:** {markdown_cell(err.diagnosis, None)}", ""]
        if err.log_tail:
            tail = [visible(line, newlines=False) for line in err.log_tail[-40:]]
            fence = code_fence(tail)
            lines += [
                "<details><summary>server log tail</summary>",
                "",
                fence,
                *tail,
                fence,
                "</details>",
                "",
            ]
    if record.demos:
        lines += [
            "| demo | status | verdict | latency | TTFT | tokens (in/out) | tok/s | answer or error |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for demo in record.demos:
            mark = DEMO_MARKS.get(demo.status, "❌")
            text = demo.answer if demo.status == "passed" else demo.error
            if demo.verdict == "failed":  # the answer beside the missing words, never only the words
                text = failed_line(demo)
            if demo.diagnosis:
                text = f"{text} — {demo.diagnosis}"
            stand_in = next(
                (p for p in ("known", "synthetic") if any(a.provenance == p for a in demo.assets)), ""
            )
            lines.append(
                f"| {markdown_cell(demo.name)}{f' ({stand_in} media)' if stand_in else ''} "
                f"| {mark} {demo.status} | {markdown_cell(demo_label(demo))} "
                f"| {fmt(demo.latency_s, ' s')} | {fmt(demo.ttft_s, ' s')} "
                f"| {fmt(demo.prompt_tokens)}/{fmt(demo.completion_tokens)} "
                f"| {fmt(demo.tokens_per_s, '', 1)} | {markdown_cell(text, 160)} |"
            )
        lines.append("")
        lines += task_lines(record)
        lines += media_lines(record)
    for note in record.notes:
        lines.append(f"> {markdown_cell(note, None)}")
    if record.notes:
        lines.append("")
    command = one_line(record.server.command) if record.server.command else ""
    if command:
        fence = code_fence([command])
        lines += ["<details><summary>command</summary>", "", fence + "sh", command, fence, "</details>"]
    return "\n".join(lines) + "\n"


def checks_line(demo: DemoRecord) -> str:
    """What a task's verdict checked, in one line: `word error rate 0.00 against '...'; dimension 16 (shape only)`."""
    return "; ".join(
        f"{c.name} {c.value}".strip()
        + ("" if c.passed else " (failed)")
        + (" (shape only)" if c.shape_only else "")
        for c in demo.checks
    )


def task_lines(record: RunRecord) -> list[str]:
    """The tasks past chat: each first request's route and what its verdict checked."""
    tasks = [d for d in record.demos if d.task and d.kind == "demo"]
    if not tasks:
        return []
    lines = ["| task demo | route | checks |", "|---|---|---|"]
    for demo in tasks:
        lines.append(
            f"| {markdown_cell(demo.name)} | {markdown_cell(demo.endpoint or '')} "
            f"| {markdown_cell(checks_line(demo) or 'none', 240)} |"
        )
    return [*lines, ""]
