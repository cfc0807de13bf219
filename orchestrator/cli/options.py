"""The command line, written down once: every command and every option (flags, type, default, help).

Each command's parser is built from `OPTIONS` (nox's `_options.py` is the model); an option that
sets a field of `Options` takes its default from `DEFAULTS`, and `options_from` turns any command's
parsed arguments into `Options`. Adding an option is one row here (and the field in `Options`);
tests/test_options.py checks that every command's arguments land in `Options`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.errors import UsageError
from orchestrator.core.options import DEFAULT_MAX_TOKENS, DEFAULTS, Options

PROFILE_HELP = (
    "a profile (a name, see `mmdemo list`, or a YAML file) or a model: a hub id (org/name[@revision]) "
    "or a model directory, whose profile is derived when none names it"
)


# -- argument types ---------------------------------------------------------------------------------


def chat_types(value: str) -> tuple[Any, ...]:
    """'text-only,audio' -> (ChatType.TEXT, ChatType.AUDIO); an unknown name says which are known."""
    from orchestrator.core.chattypes import ChatType

    out = []
    for item in value.split(","):
        try:
            out.append(ChatType(item.strip()))
        except ValueError:
            known = ", ".join(c.value for c in ChatType)
            raise argparse.ArgumentTypeError(f"unknown chat type {item!r} (known: {known})") from None
    return tuple(out)


def port(value: str) -> int:
    """A port number; 0 picks a free one."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{number} is not a port (1-65535; 0 picks a free one)")
    return number


def number(kind: type[float] | type[int], minimum: float, strict: bool) -> Callable[[str], Any]:
    """An argparse type for numbers > minimum (strict) or >= minimum."""

    def parse(value: str) -> float | int:
        try:
            got = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if got < minimum or (strict and got == minimum):
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(f"{value} must be {bound}")
        return got

    return parse


def names(value: str) -> tuple[str, ...]:
    """'tool_calling,reasoning' -> ('tool_calling', 'reasoning'): a vLLM recipe's feature names."""
    out = tuple(n.strip() for n in value.split(",") if n.strip())
    if not out:
        raise argparse.ArgumentTypeError("name at least one feature")
    return out


SECONDS = number(float, 0, strict=True)
GRACE = number(float, 0, strict=False)
COUNT = number(int, 1, strict=False)


# -- the table --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A subcommand ("report diff": a subcommand of `report`) and its one-line help."""

    name: str
    help: str
    epilog: str | None = None  # None: the top parser's exit codes where `exit_codes` is set
    exit_codes: bool = False


@dataclass(frozen=True)
class Option:
    """One option (or positional argument) of the commands that take it.

    `field`: the `Options` field it sets (its dest, its default from `DEFAULTS`); None for a command's own
    argument, read by that command as `args.<dest>`. `launch_only`: it means something only for a server
    mmdemo launches, so `--base-url` refuses it. `conflicts`: dests that cannot be given with it.
    `example`: a value the tests give it.
    """

    flags: tuple[str, ...]
    commands: tuple[str, ...]
    help: str
    field: str | None = None
    dest: str | None = None
    type: Callable[[str], Any] | None = None
    action: str | None = None
    choices: tuple[str, ...] | None = None
    nargs: str | None = None
    metavar: str | None = None
    default: Any = None
    required: bool = False
    launch_only: bool = False
    conflicts: tuple[str, ...] = ()
    why: str = ""  # why the conflicts cannot go with it
    example: str | None = None

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    @property
    def name(self) -> str:
        """Its dest: the attribute on the parsed arguments."""
        if self.field is not None:
            return self.field
        if self.dest is not None:
            return self.dest
        return self.flags[-1].lstrip("-").replace("-", "_")

    @property
    def shown(self) -> str:
        """How a message names it: its long flag (`-c/--chat-type`), or the positional's name."""
        return "/".join(self.flags)

    @property
    def initial(self) -> Any:
        """What it is when not given."""
        return getattr(DEFAULTS, self.field) if self.field is not None else self.default


COMMANDS: tuple[Command, ...] = (
    Command("list", "profiles with model, chat types, variants, minimum memory"),
    Command("plan", "what `run` would launch (the exact command, the checks), without running anything"),
    Command("validate", "validate profiles (all by default); exit 2 on any error"),
    Command("run", "launch, wait ready, run the demos, report, tear down", exit_codes=True),
    Command("serve", "launch and keep serving until Ctrl-C, then tear down"),
    Command("demo", "run chat types against a running server (no profile)"),
    Command("doctor", "what this machine has: vLLM, GPUs, token, caches, runnable profiles"),
    Command("matrix", "every profile on every GPU class: one box, a Ray cluster, or SkyPilot"),
    Command("report", "work with run reports"),
    Command("report diff", "what changed between two runs (report schema 1, 2 or 3)"),
    Command("report schema", "print the JSON Schema of report.json"),
    Command("models", "tiny local models for the CPU profiles"),
    Command("models build", "build a tiny model into the cache (needs the vLLM env's torch)"),
    Command("models list", "the tiny models: built or not, the chat types and tasks each serves and runs"),
    Command("init", "derive a profile for a model (hub id or directory) and write it as YAML"),
    Command("recipes", "the vLLM recipes in a directory: tasks, variants, which this machine can run"),
)

# Which commands take which options: a launched server, what every launched server is told, demos.
LAUNCH = ("run", "serve", "plan")
SERVER = (*LAUNCH, "matrix")
DEMOS = ("run", "plan", "demo", "matrix")
VLLM = (*SERVER, "validate", "doctor", "models build", "models list", "init")
EVERY = tuple(c.name for c in COMMANDS)

OPTIONS: tuple[Option, ...] = (
    # -- every command (before or after its name) --
    Option(("-v", "--verbose"), EVERY, "log more (-vv for debug)", dest="verbose", action="count", default=0),
    Option(("--profiles-dir",), EVERY, "look for profiles here first (also: MMDEMO_PROFILES)",
           field="profiles_dir", example="/tmp/profiles"),
    # -- what to run --
    Option(("profile",), LAUNCH, PROFILE_HELP, field="profile", example="cpu-tiny-omni"),
    Option(("--trust-remote-code",), (*LAUNCH, "validate", "matrix", "init"),
           "a model that needs its own code may run it (a derived profile; never added silently)",
           field="trust_remote_code", action="store_true", launch_only=True),
    Option(("--gpu",), LAUNCH, "variant to use: auto (detect), a GPU class, or cpu (default {default})",
           field="gpu", launch_only=True, example="H100"),
    Option(("--port",), LAUNCH, "server port (default or 0: a free one)", field="port", type=port,
           launch_only=True, example="8123"),
    # -- what every launched server is told --
    Option(("--host",), SERVER, "address the server binds (default {default})", field="host",
           launch_only=True, example="0.0.0.0"),
    Option(("--vllm-bin",), VLLM,
           "the vLLM command (default: $MMDEMO_VLLM_BIN, `vllm` on PATH, then the project's .venv-vllm)",
           field="vllm_bin", launch_only=True, example="/opt/vllm/bin/vllm"),
    Option(("--timeout",), SERVER, "seconds to wait for readiness (default: the variant's)", field="timeout_s",
           metavar="S", type=SECONDS, launch_only=True, example="90"),
    Option(("--grace",), SERVER, "seconds between SIGTERM and SIGKILL (default {default:g})", field="grace_s",
           metavar="S", type=GRACE, launch_only=True, example="3"),
    Option(("--runs-dir",), (*SERVER, "demo"), "where run directories go (default {default}; the newest "
           "is also DIR/latest)", field="runs_dir", type=Path, example="/tmp/runs"),
    Option(("--container-runtime",), (*SERVER, "validate"), "with --image: the runtime (default: the one on PATH, docker first)",
           field="container_runtime", choices=("docker", "podman"), launch_only=True, example="podman"),
    Option(("--no-budget",), SERVER,
           "launch without first counting each demo's tokens with vLLM's renderer (default: count them)",
           field="budget", action="store_false", launch_only=True),
    Option(("--count-first",), SERVER, "count the demos' tokens before `vllm serve` starts (default: while it "
           "starts; a demo that cannot fit ends the start)", field="count_first", action="store_true",
           launch_only=True),
    Option(("--follow-logs",), LAUNCH, "stream the server log while waiting", field="follow_logs",
           action="store_true", launch_only=True),
    Option(("--api-key",), (*LAUNCH, "demo"),
           "the API key the server requires (default: a fresh random key per run; EMPTY is what vLLM's "
           "example client sends); with --base-url or `demo`: the running server's key (default: "
           "$VLLM_API_KEY, else EMPTY)", field="api_key", example="sk-test"),
    Option(("--quick-start",), LAUNCH, "eager mode, no compilation: a faster start for a demo",
           field="quick_start", action="store_true", launch_only=True),
    Option(("--no-prefetch",), LAUNCH,
           "leave the weight download to vLLM (default: prefetch a hub model with a progress bar)",
           field="prefetch", action="store_false", launch_only=True),
    Option(("--dummy-weights",), LAUNCH, "random weights from the config (--load-format dummy): no download",
           field="dummy_weights", action="store_true", launch_only=True),
    Option(("--image",), (*LAUNCH, "validate"),
           "run vLLM in this container image, entrypoint `vllm serve` (e.g. vllm/vllm-openai:v0.11.0); "
           "default: the profile's `image:`, else vLLM on the host", field="image", launch_only=True,
           example="vllm/vllm-openai:v0.11.0"),
    Option(("--base-url",), ("run", "plan"), "attach to a running server instead of launching one",
           field="base_url", example="http://127.0.0.1:8000/v1"),
    Option(("--base-url",), ("demo",), "the running server (http://HOST:PORT[/v1])", field="base_url",
           required=True, example="http://127.0.0.1:8000/v1"),
    # -- the demos --
    Option(("--only",), DEMOS, "chat types to run, comma-separated", field="only", type=chat_types,
           example="text-only,audio"),
    Option(("-c", "--chat-type"), ("demo",), "chat types to run, comma-separated (default: all six)",
           dest="chat_type", type=chat_types, conflicts=("only",), why="both choose the chat types"),
    Option(("--concurrency",), DEMOS, "at most N requests at once (default: all)", field="concurrency",
           metavar="N", type=COUNT, example="2"),
    Option(("--sequential",), DEMOS, "one request at a time, like the example (--concurrency 1)",
           dest="sequential", action="store_true", conflicts=("concurrency",),
           why="--sequential is --concurrency 1"),
    Option(("--max-completion-tokens",), DEMOS, f"per request (default: the profile's, else {DEFAULT_MAX_TOKENS})",
           field="max_completion_tokens", metavar="N", type=COUNT, example="64"),
    Option(("--request-timeout",), DEMOS, "seconds per demo request (default {default:g})",
           field="request_timeout_s", metavar="S", type=SECONDS, example="30"),
    Option(("--offline",), DEMOS, "never download media; use the generated known-answer media instead",
           field="offline", action="store_true"),
    Option(("--media",), DEMOS, "the demos' media: auto (the example's assets; known-answer media where one "
           "cannot be had), known (always the known-answer media), upstream (the example's; a stand-in "
           "with no truth where one cannot be had); default {default}", field="media",
           choices=("auto", "known", "upstream"), example="known"),
    Option(("--asset-seed",), DEMOS, "which known-answer media: colours, directions, words (default {default})",
           field="asset_seed", metavar="N", type=int, example="1"),
    Option(("--no-worst-case",), DEMOS,
           "skip the last request, every medium the limits allow at once (default: send it)",
           field="worst_case", action="store_false"),
    # -- validate --
    Option(("paths",), ("validate",), "profiles (names or files), or models (hub id, directory) to derive one "
           "for (default: every profile)", nargs="*"),
    Option(("--against-vllm",), ("validate",),
           "also parse every variant's `vllm serve` line with the installed vLLM's own parser",
           action="store_true"),
    # -- matrix --
    Option(("profiles",), ("matrix",), "profiles or models (default: every profile that can run on the engine)",
           nargs="*"),
    Option(("--gpu",), ("matrix",), "GPU classes, comma-separated (default: what the engine has)",
           dest="gpu_classes"),
    Option(("--engine",), ("matrix",), "this box, or Ray (RAY_ADDRESS)", choices=("local", "ray"),
           default="local"),
    Option(("--emit",), ("matrix",), "print a SkyPilot task that runs this matrix; run nothing",
           choices=("skypilot",)),
    Option(("--launch",), ("matrix",), "SkyPilot: one managed job per GPU class, at once; results here",
           action="store_true"),
    Option(("--pipeline",), ("matrix",), "SkyPilot: one pipeline, the GPU classes one after another",
           action="store_true"),
    Option(("--bucket",), ("matrix",), "with --emit skypilot: a bucket to mount for the matrix directory"),
    Option(("--schema",), ("matrix",), "print the JSON Schema of matrix.json and exit", action="store_true"),
    Option(("--image",), ("matrix",),
           "run every cell in this container image; repeat it to compare vLLM versions side by side",
           dest="images", action="append", default=[]),
    # -- report --
    Option(("run_a",), ("report diff",), "the first run directory (or its report.json)"),
    Option(("run_b",), ("report diff",), "the second run directory (or its report.json)"),
    Option(("--html",), ("report diff",), "also write the diff as a small HTML page", metavar="OUT", type=Path),
    # -- models build --
    Option(("name",), ("models build",), "the tiny model (default {default})", nargs="?", default="tiny-omni"),
    Option(("--force",), ("models build",), "build it again even if it is built", action="store_true"),
    # -- init --
    Option(("model",), ("init",), "a hub id (org/name, optionally @revision) or a local model directory",
           nargs="?"),
    Option(("-o", "--output"), ("init",), "the file to write (default: print it)", type=Path),
    Option(("--force",), ("init",), "overwrite --output if it exists", action="store_true"),
    Option(("--gpu",), ("init",),
           "size it for: auto (the GPUs found), cpu, or GPU classes with counts, e.g. H100,L4x2 (default {default})",
           dest="gpu", default="auto"),
    Option(("--recipe",), ("init",), "a vLLM recipe (a file, or recipe:ORG/MODEL): its profile, the rest derived"),
    # -- vLLM recipes (model/recipe.py, cli/recipes.py) --
    Option(("--variant",), (*LAUNCH, "validate", "matrix", "init"),
           "a vLLM recipe's variant (default: `default` where the GPU's memory holds it, else the largest "
           "that fits)", field="recipe_variant", launch_only=True, example="fp8"),
    Option(("--feature",), (*LAUNCH, "validate", "matrix", "init"),
           "a vLLM recipe's opt-in features to turn on, comma-separated (the others are on)",
           field="recipe_features", type=names, launch_only=True, example="text_only"),
    Option(("--no-feature",), (*LAUNCH, "validate", "matrix", "init"),
           "a vLLM recipe's features to turn off, comma-separated", field="recipe_without", type=names,
           launch_only=True, example="tool_calling"),
    Option(("directory",), ("recipes",), "a directory of recipes (a checkout of vllm-project/recipes)"),
    Option(("--vllm-bin",), ("recipes",), "the vLLM whose version counts (default: as `run` finds it)",
           field="vllm_bin", example="/opt/vllm/bin/vllm"),
    Option(("--recipe-patch",), ("report",), "the recipe's meta.hardware as the run or matrix in this "
           "directory found it, as a patch of the recipe file", metavar="RUN_DIR|MATRIX_DIR", type=Path),
)  # fmt: skip


def rows(command: str) -> tuple[Option, ...]:
    """The options of one command, in the table's order."""
    return tuple(row for row in OPTIONS if command in row.commands)


# -- parsers ----------------------------------------------------------------------------------------


class _Version(argparse.Action):
    """`mmdemo --version`: the installed mmdemo's version, read only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from orchestrator.record.rundir import mmdemo_version

        print(f"mmdemo {mmdemo_version()}")
        parser.exit()


def add_option(parser: argparse.ArgumentParser, row: Option, *, suppress_default: bool = False) -> None:
    """One row as an argparse argument; `suppress_default`: only set when given (a global option repeated
    on a subcommand must not overwrite what was given before the subcommand's name)."""
    kwargs: dict[str, Any] = {"help": row.help.format(default=row.initial)}
    if not row.positional:
        kwargs["dest"] = row.name
        kwargs["default"] = argparse.SUPPRESS if suppress_default else row.initial
        if row.required:
            kwargs["required"] = True
    elif row.nargs in ("?", "*"):
        kwargs["default"] = row.initial
    for key in ("type", "action", "choices", "nargs", "metavar"):
        if (value := getattr(row, key)) is not None:
            kwargs[key] = value
    if not row.positional and row.action in (None, "append") and row.metavar is None and row.choices is None:
        kwargs["metavar"] = row.flags[-1].lstrip("-").upper().replace("-", "_")  # --timeout S, not TIMEOUT_S
    parser.add_argument(*row.flags, **kwargs)


def build_parser(description: str, epilog: str) -> argparse.ArgumentParser:
    """The whole command line: the top parser and one subparser per command, each from the table."""
    parser = argparse.ArgumentParser(
        prog="mmdemo",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print mmdemo's version and exit")
    for row in OPTIONS:
        if row.commands == EVERY:
            add_option(parser, row)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {
        "": parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    }
    for command in COMMANDS:
        parent, _, own = command.name.rpartition(" ")
        sub = groups[parent].add_parser(
            own,
            help=command.help,
            description=command.help,
            epilog=epilog if command.exit_codes else command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(command_name=command.name)
        for row in rows(command.name):
            add_option(sub, row, suppress_default=row.commands == EVERY)
        if any(c.name.startswith(command.name + " ") for c in COMMANDS):  # it has subcommands
            dest = f"{command.name.replace(' ', '_')}_command"
            own_options = any(command.name in row.commands and row.commands != EVERY for row in OPTIONS)
            groups[command.name] = sub.add_subparsers(dest=dest, required=not own_options, metavar="COMMAND")
    return parser


# -- arguments -> Options -----------------------------------------------------------------------------


def _given(args: argparse.Namespace, row: Option) -> bool:
    """True when the command line set it (a value other than its default)."""
    value = getattr(args, row.name, row.initial)
    return value != row.initial and value is not None


def refuse_conflicts(args: argparse.Namespace) -> None:
    """Options that cannot apply together are a one-line refusal (exit 2), never one silently dropped."""
    command = getattr(args, "command_name", args.command)
    table = rows(command)
    given = {row.name: row for row in table if _given(args, row)}
    if "base_url" in given:
        if command == "plan":
            raise UsageError(
                "plan --base-url: nothing is launched when attaching to a running server",
                hint="`mmdemo run PROFILE --base-url URL` sends the demos to it",
            )
        for row in table:
            if row.launch_only and row.name in given:
                raise UsageError(
                    f"--base-url attaches to a running server: {row.shown} applies only to a server "
                    "mmdemo launches"
                )
    for row in given.values():
        for other in row.conflicts:
            if other in given:
                raise UsageError(f"{row.shown} and {given[other].shown} cannot go together: {row.why}")


def options_from(args: argparse.Namespace) -> Options:
    """A command's parsed arguments as Options (their defaults are DEFAULTS'), with the environment."""
    from orchestrator.core.environment import Environment

    refuse_conflicts(args)
    command = getattr(args, "command_name", args.command)
    given: dict[str, Any] = {
        row.field: getattr(args, row.field)
        for row in rows(command)
        if row.field is not None and hasattr(args, row.field)
    }
    if getattr(args, "sequential", False):
        given["concurrency"] = 1
    return dataclasses.replace(DEFAULTS, **given, environment=Environment.read())
