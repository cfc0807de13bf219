"""The report: report.json (versioned), report.md (for an issue), junit.xml (for CI), and diffs."""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import UsageError

SCHEMA_VERSION = 1
# The schema of report.json, version 1: key -> the JSON types its value may have.
SCHEMA: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "mmdemo_version": (str,),
    "status": (str,),
    "profile": (str,),
    "variant": (str,),
    "model": (str,),
    "served_model_name": (str,),
    "vllm": (dict, type(None)),
    "machine": (dict,),
    "server": (dict,),
    "demos": (list,),
    "summary": (dict,),
    "teardown": (dict, type(None)),
    "error": (dict, type(None)),
    "notes": (list,),
    "started_at": (str,),
    "finished_at": (str, type(None)),
}
DEMO_SCHEMA: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "chat_type": (str,),
    "variant": (str,),
    "status": (str,),
    "http_status": (int, type(None)),
    "latency_s": (float, int),
    "ttft_s": (float, int, type(None)),
    "prompt_tokens": (int, type(None)),
    "completion_tokens": (int, type(None)),
    "tokens_per_s": (float, int, type(None)),
    "answer": (str,),
    "error": (str, type(None)),
    "assets": (list,),
}
STATUSES = ("passed", "failed", "error", "interrupted")
REQUIRED_KEYS = tuple(SCHEMA)  # every report.json has these; `report diff` relies on them
DEMO_KEYS = tuple(DEMO_SCHEMA)


def validate(report: Mapping[str, Any]) -> list[str]:
    """Every way `report` departs from the schema, as one line each ([] when it conforms)."""
    problems = [f"{key}: missing" for key in SCHEMA if key not in report]
    problems += [
        f"{key}: {type(report[key]).__name__} is not {' or '.join(t.__name__ for t in types)}"
        for key, types in SCHEMA.items()
        if key in report and not isinstance(report[key], types)
    ]
    if report.get("status") not in STATUSES:
        problems.append(f"status: {report.get('status')!r} is not one of {', '.join(STATUSES)}")
    for index, demo in enumerate(report.get("demos") or []):
        for key, types in DEMO_SCHEMA.items():
            if key not in demo:
                problems.append(f"demos.{index}.{key}: missing")
            elif not isinstance(demo[key], types) or isinstance(demo[key], bool):
                problems.append(f"demos.{index}.{key}: {type(demo[key]).__name__} is not allowed")
    return problems


def summarize(demos: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and the wall time of the demo phase."""
    passed = sum(1 for d in demos if d["status"] == "passed")
    return {"total": len(demos), "passed": passed, "failed": len(demos) - passed}


def write_atomic(path: Path, text: str) -> None:
    """Write a file so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_all(run_dir: Path, report: Mapping[str, Any]) -> list[Path]:
    """Write report.json, report.md and junit.xml into the run directory."""
    files = [run_dir / "report.json", run_dir / "report.md", run_dir / "junit.xml"]
    write_atomic(files[0], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_atomic(files[1], to_markdown(report))
    write_atomic(files[2], to_junit(report))
    return files


def _fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _cell(text: str | None, limit: int = 80) -> str:
    text = " ".join((text or "").split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def to_markdown(report: Mapping[str, Any]) -> str:
    """A table a person would paste into an issue."""
    summary = report["summary"]
    vllm = report.get("vllm") or {}
    machine = report.get("machine") or {}
    server = report.get("server") or {}
    teardown = report.get("teardown") or {}
    verdict = {"passed": "✅ passed", "failed": "❌ failed"}.get(report["status"], f"⚠️ {report['status']}")
    lines = [
        f"# mmdemo: {report['profile']} on {report['variant']} — {verdict}",
        "",
        f"- model: `{report['model']}` (served as `{report['served_model_name']}`)",
        f"- vLLM: {vllm.get('version', '?')} (`{vllm.get('path', '?')}`)",
        f"- machine: {machine.get('accelerator', '?')}; {machine.get('cpu', '?')}",
        f"- time to ready: {_fmt(server.get('ready_s'), ' s', 1)}",
        f"- demos: {summary['passed']}/{summary['total']} passed",
        f"- teardown: {_fmt(teardown.get('duration_s'), ' s')}, "
        f"{teardown.get('remaining', '?')} process(es) left",
        "",
    ]
    if report.get("error"):
        err = report["error"]
        lines += [f"**Error:** {err.get('message')}", ""]
        if err.get("log_tail"):
            lines += ["<details><summary>server log tail</summary>", "", "```"]
            lines += list(err["log_tail"])[-40:]
            lines += ["```", "</details>", ""]
    if report["demos"]:
        lines += [
            "| demo | status | latency | TTFT | tokens (in/out) | tok/s | answer or error |",
            "|---|---|---|---|---|---|---|",
        ]
        for demo in report["demos"]:
            mark = "✅" if demo["status"] == "passed" else "❌"
            text = demo["error"] if demo["status"] != "passed" else demo["answer"]
            synthetic = any(a.get("provenance") == "synthetic" for a in demo.get("assets") or [])
            lines.append(
                f"| {demo['name']}{' (synthetic media)' if synthetic else ''} | {mark} {demo['status']} "
                f"| {_fmt(demo['latency_s'], ' s')} | {_fmt(demo['ttft_s'], ' s')} "
                f"| {_fmt(demo['prompt_tokens'])}/{_fmt(demo['completion_tokens'])} "
                f"| {_fmt(demo['tokens_per_s'], '', 1)} | {_cell(text)} |"
            )
        lines.append("")
    for note in report.get("notes") or []:
        lines.append(f"> {note}")
    if report.get("notes"):
        lines.append("")
    lines += [
        "<details><summary>command</summary>",
        "",
        "```sh",
        server.get("command", ""),
        "```",
        "</details>",
    ]
    return "\n".join(lines) + "\n"


def to_junit(report: Mapping[str, Any]) -> str:
    """One test case per demo request; a server failure is one errored case."""
    demos = report["demos"]
    suite = ET.Element(
        "testsuite",
        name=f"mmdemo.{report['profile']}",
        tests=str(max(len(demos), 1) if report.get("error") and not demos else len(demos)),
        failures=str(sum(1 for d in demos if d["status"] != "passed")),
        errors="1" if report.get("error") and not demos else "0",
        time=f"{sum(d['latency_s'] or 0 for d in demos):.3f}",
    )
    for demo in demos:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"mmdemo.{report['profile']}.{demo['chat_type']}",
            name=demo["name"],
            time=f"{demo['latency_s'] or 0:.3f}",
        )
        if demo["status"] != "passed":
            failure = ET.SubElement(case, "failure", message=_cell(demo["error"], 200))
            failure.text = demo["error"] or ""
        else:
            ET.SubElement(case, "system-out").text = demo["answer"]
    if report.get("error") and not demos:
        case = ET.SubElement(suite, "testcase", classname=f"mmdemo.{report['profile']}", name="server")
        error = ET.SubElement(case, "error", message=_cell(report["error"].get("message"), 200))
        error.text = "\n".join(report["error"].get("log_tail") or [])
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def load(run: str | Path) -> dict[str, Any]:
    """Read a run's report.json (a run directory or the file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / "report.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable mmdemo report ({exc})") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UsageError(f"{path}: report schema {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    if problems := validate(data):
        raise UsageError(f"{path}: not a valid mmdemo report: {problems[0]}")
    return data


def diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per demo: status in each run, whether the answer changed, and the latency ratio b/a."""
    rows = []
    by_name_a = {d["name"]: d for d in a["demos"]}
    by_name_b = {d["name"]: d for d in b["demos"]}
    for name in [*by_name_a, *(n for n in by_name_b if n not in by_name_a)]:
        da, db = by_name_a.get(name), by_name_b.get(name)
        ratio = None
        if da and db and da.get("latency_s") and db.get("latency_s"):
            ratio = db["latency_s"] / da["latency_s"]
        rows.append(
            {
                "name": name,
                "status_a": da["status"] if da else "absent",
                "status_b": db["status"] if db else "absent",
                "answer_changed": bool(da and db and da.get("answer") != db.get("answer")),
                "latency_ratio": ratio,
            }
        )
    return rows
