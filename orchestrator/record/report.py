"""RunRecord: the one typed record of a run, written as report.json (schema version 3).

Every field report.json carries is declared here and nowhere else; the JSON Schema that
`mmdemo report schema` prints (and the package ships) is generated from these models.
Version-1 reports (before the typed record) and version 2 (a demo's way of sending its media was
called `variant`, like the profile's GPU class; it is `delivery` since 3) are still read for
`report diff`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.core.errors import UsageError

SCHEMA_VERSION: Literal[3] = 3
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")

Status = Literal["passed", "failed", "error", "interrupted"]
# hung: no token by the request's timeout (none at all, or no more) while the server lived;
# interrupted: in flight when the run was interrupted (Ctrl-C, SIGTERM): it has no answer
DemoStatus = Literal["passed", "failed", "hung", "interrupted"]
# demo: a request of the example client; repeat: the same once more after the first round (vLLM's
# multimodal processor cache serves it); worst case: every medium the limits allow, in one request
DemoKind = Literal["demo", "repeat", "worst case"]
# understood: the answer holds every expected word group and no distractor (a truth, checked);
# answered: an answer came back and there was nothing to check it against (`verdict_reason` says
# why: no words expected, a stand-in with no truth, random weights); failed: words were checked
# and are missing, or a distractor is named (`missing`, `distractors`, and the answer say which);
# no answer: an error instead of an answer.
Verdict = Literal["understood", "answered", "failed", "no answer"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssetRecord(_Model):
    """One medium a demo sent, and where it came from."""

    key: str
    kind: Literal["image", "video", "audio"] | None = None
    provenance: str | None = None  # download, cache (upstream), known, synthetic, profile
    sha256: str | None = None
    source_url: str | None = None
    path: str | None = None  # the local file that was sent (for report.html)
    reason: str | None = None  # why a substitute (known or synthetic) was used
    fact: dict[str, str] | None = None  # a known medium's truth: {"colour": "red"}; None: none known
    truth: str | None = None  # that truth in words: "a red shape moving left"


class TaskCheck(_Model):
    """One check of a task's answer past chat (demos/tasks.py): what it measured and whether it held."""

    name: str  # "words", "word error rate", "dimension", "finite", "pair order", "ranked first", "labels"
    passed: bool
    value: str = ""  # what was measured, in words: "0.25", "64", "red image 0.91 > blue 0.12"
    shape_only: bool = False  # a check of the answer's shape, not of its meaning (random weights)


class DemoRecord(_Model):
    """One demo request: what was sent, what came back, how long it took."""

    name: str
    chat_type: str  # a chat type of the example client, worst-case, or a task's name (see `task`)
    task: str | None = None  # a task past chat (core/tasks.py): transcription, embedding, ...; None: chat
    endpoint: str | None = None  # the route a task's requests went to: /v1/audio/transcriptions, ...
    word_error_rate: float | None = None  # transcription/translation/realtime: against the known words
    checks: list[TaskCheck] = Field(default_factory=list)  # what a task's verdict checked
    delivery: str  # how the media were sent: url, base64, file, input_audio (text: text)
    kind: DemoKind = "demo"
    status: DemoStatus
    verdict: Verdict = "answered"
    http_status: int | None = None
    latency_s: float
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_s: float | None = None
    prompt: str = ""
    answer: str
    error: str | None = None
    expected: list[list[str]] = Field(default_factory=list)  # any-of groups, all required
    missing: list[list[str]] = Field(default_factory=list)
    reject: list[list[str]] = Field(default_factory=list)  # distractor groups: none may be named
    distractors: list[list[str]] = Field(default_factory=list)  # the distractor groups the answer named
    expect_source: str | None = None  # whose words were checked: "known" (the media's truth), "profile"
    verdict_reason: str | None = None  # what the verdict checked, or why there was nothing to check
    started_s: float | None = None  # since the demo phase began
    assets: list[AssetRecord] = Field(default_factory=list)
    diagnosis: str | None = None  # a known vLLM error explained: what it means, the field to change
    log_lines: list[str] = Field(default_factory=list)  # hung: the server's log while it was in flight
    prompt_tokens_counted: int | None = None  # counted before launch by vLLM's renderer (the budget)


class BudgetDemo(_Model):
    """One request as vLLM's renderer counted it before launch."""

    name: str
    prompt_tokens: int | None = None
    completion_tokens: int
    items: list[list[Any]] = Field(default_factory=list)  # [modality, embedding tokens] in prompt order
    error: str | None = None  # vLLM's words when it would refuse the request


class BudgetRecord(_Model):
    """Every demo's tokens counted before launch, and the sizes the server starts with."""

    vllm: str
    max_model_len: int | None = None
    model_max_len: int | None = None  # what the model's own config allows
    encoder_cache_size: int | None = None
    max_tokens_per_item: dict[str, int] | None = None
    limits: dict[str, int] = Field(default_factory=dict)  # limit_mm_per_prompt as the server applies it
    demos: list[BudgetDemo] = Field(default_factory=list)
    seconds: float
    cached: bool = False


class DerivationRecord(_Model):
    """A profile mmdemo derived for a model with none: from what vLLM said, and where each value came from."""

    line: str  # the one line the run printed
    vllm: str
    architectures: list[str] = Field(default_factory=list)
    values: dict[str, str] = Field(default_factory=dict)  # dotted profile key -> where its value came from
    notes: list[str] = Field(default_factory=list)
    weights_bytes: int | None = None


class Offered(_Model):
    """Chat types or tasks: those the model serves, as vLLM's probe said (None: not probed), and those run."""

    served: list[str] | None = None
    run: list[str] = Field(default_factory=list)

    def shown(self) -> str:
        """`a, b (run), c`: each served name, marked where it was run; one run but not served too."""
        if self.served is None:
            ran = ", ".join(f"{n} (run)" for n in self.run)
            return ran + ("; served: not probed" if ran else "not probed")
        shown = [f"{n} (run)" if n in self.run else n for n in self.served]
        shown += [f"{n} (run, not served)" for n in self.run if n not in self.served]
        return ", ".join(shown) or "none"


class Capabilities(_Model):
    """Per model: which chat types and which tasks past chat it serves, and which this run ran."""

    chat_types: Offered = Field(default_factory=Offered)
    tasks: Offered = Field(default_factory=Offered)


class RecipeRecord(_Model):
    """The vLLM recipe the run's profile was made from: what `report --recipe-patch` marks verified."""

    path: str
    slug: str  # ORG/MODEL: models/ORG/MODEL.yaml in vllm-project/recipes
    sha256: str  # of the recipe text that ran
    variant: str
    features: list[str] = Field(default_factory=list)
    model_id: str


class VllmRecord(_Model):
    """The vLLM that served, and what its environment holds (what breaks remote-code models, decoders)."""

    version: str
    path: str
    torch: str | None = None
    transformers: str | None = None
    decoders: list[str] = Field(default_factory=list)  # audio/video decoders found in vLLM's environment


class MachineRecord(_Model):
    cpu: str
    cores: int | None
    python: str
    platform: str
    accelerator: str
    gpus: list[dict[str, Any]] = Field(default_factory=list)
    driver: str | None = None


class ServerRecord(_Model):
    """The server that ran the demos: launched by mmdemo, or attached to."""

    base_url: str | None = None
    attached: bool = False
    command: str | None = None
    argv: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    log: str | None = None
    pid: int | None = None
    ready_s: float | None = None
    models: list[str] = Field(default_factory=list)


class ContainerRecord(_Model):
    """The container vLLM ran in: what to pull and run again to reproduce the run."""

    runtime: Literal["docker", "podman"]
    runtime_version: str | None = None
    image: str  # as given (--image, or the profile's `image:`)
    image_id: str | None = None
    digest: str | None = None  # the registry digest where the image has one (podman: also local images)
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    gpus: list[int] | None = None  # the host GPUs it was given; None: none (a cpu variant)
    run_line: str | None = None  # the whole `docker run ...` line; secrets only by name


class PhaseSpan(_Model):
    """One phase of vLLM's start, read from its log: seconds since launch."""

    phase: str
    start_s: float
    end_s: float


class TimelineEvent(_Model):
    """A moment of the run: seconds since the command started."""

    event: str
    at_s: float


class DownloadRecord(_Model):
    """The weight prefetch before launch."""

    repo: str
    bytes_total: int
    bytes_downloaded: int
    seconds: float
    path: str | None = None
    hf_cache: str | None = None  # the Hugging Face hub cache it went into, vLLM's too (core/hfenv.py)


class TeardownRecord(_Model):
    """How the server's process tree ended; `remaining` (and `containers_remaining`) must be 0."""

    duration_s: float
    signals: tuple[str, ...]
    processes_signalled: int
    escaped: int
    remaining: int
    returncode: int | None
    port_free: bool
    gpu_released: bool | None
    # A server in a container: the runtime commands that ended it (`stop -t 15`, `kill`, `rm -f`), and
    # the containers carrying the run's label afterwards, running or not. None: no container.
    container_steps: tuple[str, ...] = ()
    containers_remaining: int | None = None


class ErrorRecord(_Model):
    type: str
    message: str
    hint: str | None = None
    returncode: int | None = None
    timeout_s: float | None = None
    diagnosis: str | None = None
    log_tail: list[str] = Field(default_factory=list)


class Summary(_Model):
    total: int = 0
    passed: int = 0
    failed: int = 0  # hung ones included
    understood: int = 0
    hung: int = 0
    interrupted: int = 0  # in flight when the run was interrupted: neither passed nor failed


class RunRecord(_Model):
    """report.json."""

    schema_version: Literal[3] = SCHEMA_VERSION
    mmdemo_version: str
    status: Status = "failed"
    profile: str
    profile_path: str | None = None
    profile_source: str | None = None  # which profile and why: named, the model's own, or derived
    derivation: DerivationRecord | None = None
    capabilities: Capabilities | None = None  # served (vLLM's probe, where it ran) and run, per kind
    recipe: RecipeRecord | None = None  # the profile came from a vLLM recipe (model/recipe.py)
    budget: BudgetRecord | None = None  # the demos' tokens counted before launch; None: not checked
    variant: str
    model: str
    model_path: str | None = None
    served_model_name: str
    flags: list[str] = Field(default_factory=list)  # run options that change the verdict: quick-start, ...
    vllm: VllmRecord | None = None
    machine: MachineRecord
    server: ServerRecord = Field(default_factory=ServerRecord)
    container: ContainerRecord | None = None  # vLLM ran in a container image (--image)
    download: DownloadRecord | None = None
    startup: list[PhaseSpan] = Field(default_factory=list)
    demos: list[DemoRecord] = Field(default_factory=list)
    demos_wall_s: float | None = None
    asset_server_requests: int | None = None
    summary: Summary = Field(default_factory=Summary)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    teardown: TeardownRecord | None = None
    error: ErrorRecord | None = None
    notes: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)  # vLLM's start-up lines that predict trouble, explained
    started_at: str
    finished_at: str | None = None

    def summarize(self) -> Summary:
        """Counts of the demos, as stored in `summary`."""
        passed = sum(1 for d in self.demos if d.status == "passed")
        understood = sum(1 for d in self.demos if d.verdict == "understood")
        hung = sum(1 for d in self.demos if d.status == "hung")
        stopped = sum(1 for d in self.demos if d.status == "interrupted")
        total = len(self.demos)
        return Summary(
            total=total,
            passed=passed,
            failed=total - passed - stopped,
            understood=understood,
            hung=hung,
            interrupted=stopped,
        )

    def to_json(self) -> str:
        """report.json's text: every field, exact text kept (JSON escapes it, lone surrogates too)."""
        text = json.dumps(self.model_dump(), indent=2, ensure_ascii=False) + "\n"
        # A lone surrogate (a broken answer) cannot be UTF-8: write it as its JSON escape, \udXXX.
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of report.json, generated from RunRecord."""
    schema = RunRecord.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/mmdemo/mmdemo/report.schema.json"
    return schema


def schema_text() -> str:
    """The schema as the package ships it (report.schema.json)."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


# -- reading reports back (report diff) --------------------------------------------------------------


class DiffDemo(BaseModel):
    """What `report diff` needs of one demo, in any schema version."""

    model_config = ConfigDict(extra="ignore")
    name: str
    status: str
    answer: str | None = None
    latency_s: float | None = None


class DiffReport(BaseModel):
    """What `report diff` needs of a report, in any schema version."""

    model_config = ConfigDict(extra="ignore")
    schema_version: Literal[1, 2, 3]
    profile: str
    status: str
    demos: list[DiffDemo]
    vllm: dict[str, Any] | None = None
    container: dict[str, Any] | None = None

    @property
    def backend(self) -> str:
        """`vLLM 0.32.0 in IMAGE (sha256:...)`, or `vLLM 0.32.0` on the host: what the run ran on."""
        version = (self.vllm or {}).get("version") or "?"
        if not self.container:
            return f"vLLM {version}"
        digest = self.container.get("digest") or self.container.get("image_id") or ""
        return f"vLLM {version} in {self.container.get('image')}" + (f" ({digest[:19]})" if digest else "")


def load(run: str | Path) -> DiffReport:
    """Read a run's report.json (a run directory or the file), schema version 1, 2 or 3."""
    path = Path(run)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable mmdemo report ({exc})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version not in (1, 2, 3):
        raise UsageError(f"{path}: report schema {version!r}, expected 1, 2 or 3")
    try:
        if version == SCHEMA_VERSION:
            RunRecord.model_validate(data)
        return DiffReport.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{path}: not a valid mmdemo report: {where}: {first['msg']}") from None


def diff(a: DiffReport, b: DiffReport) -> list[dict[str, Any]]:
    """Per demo: status in each run, whether the answer changed, and the latency ratio b/a."""
    rows = []
    by_name_a = {d.name: d for d in a.demos}
    by_name_b = {d.name: d for d in b.demos}
    for name in [*by_name_a, *(n for n in by_name_b if n not in by_name_a)]:
        da, db = by_name_a.get(name), by_name_b.get(name)
        ratio = None
        if da and db and da.latency_s and db.latency_s:
            ratio = db.latency_s / da.latency_s
        answer = "changed" if da and db and da.answer != db.answer else "same" if da and db else "–"
        rows.append(
            {
                "name": name,
                "status_a": da.status if da else "absent",
                "status_b": db.status if db else "absent",
                "answer": answer,
                "latency_ratio": ratio,
            }
        )
    return rows
