"""report.md: a table a person pastes into an issue, safe whatever the model said."""

from __future__ import annotations

from orchestrator.record.report import DemoRecord, RunRecord, VllmRecord
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
    """understood / answered, with the missing words, for a passed or failed demo."""
    if demo.verdict == "understood":
        return "understood"
    if demo.missing:
        return "answered, missing " + ", ".join("|".join(group) for group in demo.missing)
    return demo.verdict


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
            if demo.diagnosis:
                text = f"{text} — {demo.diagnosis}"
            synthetic = any(a.provenance == "synthetic" for a in demo.assets)
            lines.append(
                f"| {markdown_cell(demo.name)}{' (synthetic media)' if synthetic else ''} "
                f"| {mark} {demo.status} | {markdown_cell(demo_label(demo))} "
                f"| {fmt(demo.latency_s, ' s')} | {fmt(demo.ttft_s, ' s')} "
                f"| {fmt(demo.prompt_tokens)}/{fmt(demo.completion_tokens)} "
                f"| {fmt(demo.tokens_per_s, '', 1)} | {markdown_cell(text)} |"
            )
        lines.append("")
    for note in record.notes:
        lines.append(f"> {markdown_cell(note, None)}")
    if record.notes:
        lines.append("")
    command = one_line(record.server.command) if record.server.command else ""
    if command:
        fence = code_fence([command])
        lines += ["<details><summary>command</summary>", "", fence + "sh", command, fence, "</details>"]
    return "\n".join(lines) + "\n"
