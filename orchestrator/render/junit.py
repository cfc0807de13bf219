"""junit.xml: one test case per demo request, valid XML 1.0 whatever the text in it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from orchestrator.record.report import RunRecord
from orchestrator.render.markdown import checks_line, failed_line
from orchestrator.render.text import one_line, visible


def suite(record: RunRecord, name: str | None = None) -> ET.Element:
    """The <testsuite> of one run (the matrix puts several into one <testsuites>)."""
    demos = record.demos
    server_error = record.error is not None and not demos
    label = visible(name or f"mmdemo.{record.profile}", newlines=False)
    element = ET.Element(
        "testsuite",
        name=label,
        tests=str(len(demos) or int(server_error)),
        failures=str(sum(1 for d in demos if d.status != "passed")),
        errors=str(int(server_error)),
        time=f"{sum(d.latency_s for d in demos):.3f}",
    )
    for demo in demos:
        case = ET.SubElement(
            element,
            "testcase",
            classname=f"{label}.{visible(demo.chat_type, newlines=False)}",
            name=visible(demo.name, newlines=False),
            time=f"{demo.latency_s:.3f}",
        )
        if demo.checks:  # a task past chat: what its verdict checked, one property per check
            properties = ET.SubElement(case, "properties")
            for check in demo.checks:
                value = f"{'passed' if check.passed else 'failed'}: {check.value}" + (
                    " (shape only)" if check.shape_only else ""
                )
                ET.SubElement(
                    properties, "property", name=visible(check.name, newlines=False), value=visible(value)
                )
        if demo.status != "passed":
            message = one_line(demo.error, 200)
            if demo.verdict == "failed":  # the answer beside the missing words
                message = failed_line(demo, 200)
            failure = ET.SubElement(case, "failure", message=message, type=demo.status)
            answer = f"answer: {demo.answer}" if demo.verdict == "failed" else None
            failure.text = visible(
                "\n".join(filter(None, [demo.error, answer, demo.diagnosis, *demo.log_lines]))
            )
        else:
            checked = f"\nchecked: {checks_line(demo)}" if demo.checks else ""
            ET.SubElement(case, "system-out").text = visible(demo.answer + checked)
    if server_error and record.error is not None:
        case = ET.SubElement(element, "testcase", classname=label, name="server")
        error = ET.SubElement(case, "error", message=one_line(record.error.message, 200))
        error.text = visible("\n".join(record.error.log_tail))
    return element


def document(*suites: ET.Element) -> str:
    """An XML document of one <testsuite>, or of a <testsuites> holding several."""
    root = suites[0] if len(suites) == 1 else ET.Element("testsuites")
    if len(suites) != 1:
        root.extend(suites)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def to_junit(record: RunRecord) -> str:
    """The whole junit.xml of one run."""
    return document(suite(record))
