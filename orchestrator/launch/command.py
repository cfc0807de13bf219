"""Profile + variant -> the `vllm serve` argv and environment. Pure: no I/O, no globals read."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.errors import UsageError
from orchestrator.profile.schema import ResolvedProfile, ServeSettings, option_name

DEFAULT_HOST = "127.0.0.1"
REDACTED = "***"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start the server: argv, the env added to the user's, and what to show."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    display_env: Mapping[str, str]
    missing_env: tuple[str, ...]
    secrets: tuple[str, ...] = field(repr=False, default=())
    served_model_name: str = ""
    host: str = DEFAULT_HOST
    port: int = 8000

    def shell(self) -> str:
        """The argv as one copy-pasteable shell line."""
        return shlex.join(self.argv)

    def shell_with_env(self) -> str:
        """`VAR=value ... vllm serve ...` with secrets shown as references, never their values."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.display_env.items())
        return f"{prefix} {self.shell()}" if prefix else self.shell()


def is_secret_name(name: str) -> bool:
    """A variable whose name says it holds a secret (HF_TOKEN, VLLM_API_KEY, ..._PASSWORD)."""
    return _SECRET_NAME.search(name) is not None


def serve_args(serve: ServeSettings) -> list[str]:
    """The flags for named settings, in schema order, then extra_args verbatim."""
    args: list[str] = []
    for name, value in serve:
        if name == "extra_args" or value is None:
            continue
        args += render_flag(name, value)
    args += serve.extra_args
    return args


DUMMY_WEIGHTS = ("--load-format", "dummy")


def with_dummy_weights(serve: ServeSettings, where: str = "the profile") -> ServeSettings:
    """The settings plus `--load-format dummy`: random weights built from the model's config alone.

    Refused where the profile already picks a load format: the two would contradict each other.
    """
    for arg in serve.extra_args:
        if option_name(arg, known=(DUMMY_WEIGHTS[0],)) == DUMMY_WEIGHTS[0]:
            raise UsageError(
                f"--dummy-weights adds {' '.join(DUMMY_WEIGHTS)}, but {where} already sets {arg!r} in extra_args",
                hint="drop --dummy-weights, or the load format from the profile's extra_args",
            )
    return serve.model_copy(update={"extra_args": (*serve.extra_args, *DUMMY_WEIGHTS)})


def render_flag(name: str, value: Any) -> list[str]:
    """One setting as argv words: `_` -> `-`, bools -> --x/--no-x, mappings -> compact JSON."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + flag[2:]]
    if isinstance(value, Mapping):
        return [flag, json.dumps(value, separators=(",", ":"), sort_keys=False)]
    if isinstance(value, (list, tuple)):
        return [flag, *(str(v) for v in value)]
    return [flag, str(value)]


def expand_env(
    env: Mapping[str, str], user_env: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str], list[str], list[str]]:
    """Resolve `${VAR}` references: (values, display form, missing names, secret values)."""
    values: dict[str, str] = {}
    display: dict[str, str] = {}
    missing: list[str] = []
    secrets: list[str] = []
    for key, raw in env.items():
        refs = _ENV_REF.findall(raw)
        absent = [r for r in refs if not user_env.get(r)]
        if absent:
            missing += absent
            continue
        values[key] = _ENV_REF.sub(lambda m: user_env[m.group(1)], raw)
        secrets += [user_env[r] for r in refs]
        if not refs and is_secret_name(key):
            secrets.append(raw)  # a literal token in a profile is still a secret
            display[key] = REDACTED
        else:
            display[key] = raw  # the reference, never the value
    return values, display, missing, secrets


def build_plan(
    resolved: ResolvedProfile,
    *,
    vllm_bin: str = "vllm",
    host: str = DEFAULT_HOST,
    port: int = 8000,
    media_dir: str | None = None,
    user_env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """Render `vllm serve MODEL ...` for one resolved profile; never reads os.environ itself."""
    profile = resolved.profile
    served = profile.served_model_name or profile.model
    argv = [vllm_bin, "serve", profile.model_path]
    if profile.served_model_name:
        argv += ["--served-model-name", profile.served_model_name]
    argv += serve_args(resolved.serve)
    argv += ["--host", host, "--port", str(port)]
    if media_dir:
        argv += ["--allowed-local-media-path", media_dir]
    values, display, missing, secrets = expand_env(resolved.env, user_env or {})
    # The run's own settings for the server (a matrix cell's CUDA_VISIBLE_DEVICES): shown as they are.
    values, display = {**values, **(extra_env or {})}, {**display, **(extra_env or {})}
    return LaunchPlan(
        argv=tuple(argv),
        env=values,
        display_env=display,
        missing_env=tuple(missing),
        secrets=tuple(s for s in secrets if s),
        served_model_name=served,
        host=host,
        port=port,
    )


class Redactor:
    """Replaces every known secret (API key, tokens, `${VAR}` values) with *** in text."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        # Longest first so a secret that contains another is replaced whole; ignore trivial strings.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def data(self, value: Any) -> Any:
        """Redact strings anywhere inside JSON-like data."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value


# `--quick-start`: what a demo of a dozen requests does not need, on vLLM 0.32's spelling.
QUICK_MAX_NUM_SEQS = 16  # above the 11 requests a run sends at once: none waits for a slot
_COMPILE_FLAG = re.compile(r"^(--optimization-level|--compilation-config|-cc|-O\d*)$")


def quick_start(serve: ServeSettings) -> tuple[ServeSettings, tuple[str, ...]]:
    """Eager mode, no compilation, a small batch limit, each where the profile sets none; and what was added."""
    added: list[str] = []
    extra = list(serve.extra_args)
    # `--flag=value` and the dotted `--flag.key value` name the same flag.
    flags = {a.split("=", 1)[0].split(".", 1)[0] for a in extra if a.startswith("-")}
    update: dict[str, Any] = {}
    if serve.enforce_eager is None:  # no CUDA graphs to capture
        update["enforce_eager"] = True
        added.append("--enforce-eager")
    if not any(_COMPILE_FLAG.match(f) for f in flags):
        extra += ["--optimization-level", "0"]  # O0: no torch.compile, no graphs, no other passes
        added.append("--optimization-level 0")
    if "--max-num-seqs" not in flags:
        extra += ["--max-num-seqs", str(QUICK_MAX_NUM_SEQS)]
        added.append(f"--max-num-seqs {QUICK_MAX_NUM_SEQS}")
    update["extra_args"] = tuple(extra)
    return serve.model_copy(update=update), tuple(added)
