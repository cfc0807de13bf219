"""`mmdemo doctor`: what this machine has, and which profiles could run here."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from orchestrator.core.errors import MMDemoError
from orchestrator.core.hfenv import HfEnv
from orchestrator.core.options import DEFAULTS
from orchestrator.core.paths import cache_dir, packaged_profiles_dir
from orchestrator.gpus.detect import PLATFORM_NAMES, ROCM, Gpu, detect
from orchestrator.launch import checks as preflight
from orchestrator.launch import container
from orchestrator.launch.checks import free_space
from orchestrator.launch.command import expand_env
from orchestrator.profile.fit import sized_class
from orchestrator.profile.schema import iter_profile_files, parse_profile_file

if TYPE_CHECKING:
    from rich.console import Console


def doctor(args: argparse.Namespace, console: Console) -> int:
    """Print vLLM, GPUs, token, caches and the verdict for each profile; exit 0."""
    from rich.markup import escape
    from rich.table import Table

    try:
        info = preflight.vllm_version(getattr(args, "vllm_bin", None))
        vllm_line = f"{info.version} ({escape(info.path)}), found by {escape(info.found_by)}"
    except MMDemoError as exc:
        info = None
        vllm_line = f"[red]not usable[/]: {escape(str(exc))}"
    gpus = detect()
    console.print(f"vLLM:        {vllm_line}", highlight=False)
    if gpus:
        for g in gpus:
            free = f"{g.memory_free_gib:.1f} GiB free of " if g.memory_free_gib is not None else ""
            own = g.gpu_class or f"none of its own; sized by memory as {sized_class(g) or 'too small'}"
            console.print(
                f"GPU {g.index}:       {escape(g.name)}: {free}{g.memory_total_gib:.0f} GiB "
                f"(class {own}, {PLATFORM_NAMES.get(g.platform, g.platform)}, driver {g.driver or '?'}, "
                f"found by {g.detected_by or '?'})",
                highlight=False,
            )
        console.print(f"platform:    {platform_line(gpus, info.version if info else None)}", highlight=False)
    else:
        console.print(
            "GPU:         none found (NVML, nvidia-smi, amdsmi, amd-smi, rocm-smi): profiles run their cpu variant"
        )
    hf = HfEnv.read()  # what prefetch, the container's mount and the disk check use
    token = f"present (from {hf.token_source})" if hf.token_source else "not set (gated models will fail)"
    console.print(f"HF token:    {escape(token)}", highlight=False)
    offline = " (HF_HUB_OFFLINE: never asked; hub models come from the HF cache)" if hf.offline else ""
    console.print(f"HF hub:      {escape(hf.endpoint)}{offline}", highlight=False)
    for label, where, source in (
        ("mmdemo cache", cache_dir(), ""),
        ("HF cache", hf.hub_cache, f"from {hf.hub_cache_from}, "),
    ):
        free_gib = free_space(where) / 2**30
        console.print(
            f"{label + ':':<13}{escape(str(where))} ({source}{free_gib:.0f} GiB free on disk)",
            highlight=False,
        )
    containers(console)
    console.print(f"profiles:    {packaged_profiles_dir()}", highlight=False)
    console.print(
        f"defaults:    host {DEFAULTS.host}, grace {DEFAULTS.grace_s:g} s, request timeout "
        f"{DEFAULTS.request_timeout_s:g} s, media budget {DEFAULTS.media_budget_s:g} s "
        "(orchestrator/core/options.py)",
        highlight=False,
    )

    table = Table("profile", "variant here", "verdict")
    for path in iter_profile_files(args.profiles_dir):
        try:
            profile = parse_profile_file(path)
            variant = preflight.choose_variant(profile, "auto", gpus)
            resolved = profile.resolve(variant)
            preflight.check_variant(resolved)
            if info:
                preflight.check_version(info, resolved)
            preflight.check_gpus(resolved, gpus)
            env = preflight.user_env(os.environ)
            preflight.check_env(resolved, expand_env(resolved.env, env)[2], env)
            table.add_row(profile.name, variant, "[green]can run[/]" if info else "[yellow]needs vLLM[/]")
        except MMDemoError as exc:
            table.add_row(escape(path.stem), "–", f"[red]{escape(str(exc))}[/]")
    console.print(table)
    return 0


def platform_line(gpus: list[Gpu], vllm_version: str | None) -> str:
    """Which platform the GPUs are, and whether the vLLM found is a build for it."""
    platforms = list(dict.fromkeys(g.platform for g in gpus))
    names = " and ".join(PLATFORM_NAMES.get(p, p) for p in platforms)
    if len(platforms) > 1:
        return f"{names}: one vLLM build drives one platform; pick one with --gpu CLASS"
    if vllm_version is None:
        return names
    rocm_build = "rocm" in vllm_version.lower()
    if platforms[0] == ROCM and not rocm_build:
        return (
            f"{names}, but vLLM {vllm_version} is not a ROCm build: `make install-vllm` says how to get one"
        )
    if platforms[0] != ROCM and rocm_build:
        return f"{names}, but vLLM {vllm_version} is a ROCm build"
    return f"{names} (vLLM {vllm_version})"


def containers(console: Console) -> None:
    """The container runtime `--image` would use, and the vLLM images at hand."""
    from rich.markup import escape

    try:
        runtime = container.find_runtime(None)
    except MMDemoError:
        console.print("containers:  no docker or podman on PATH (--image needs one)")
        return
    version = container.runtime_version(runtime) or "version unknown"
    conf = os.environ.get("CONTAINERS_CONF")
    extra = f", CONTAINERS_CONF={escape(conf)}" if conf and runtime.name == "podman" else ""
    console.print(
        f"containers:  {runtime.name} {escape(version)} ({escape(runtime.path)}), for --image{extra}",
        highlight=False,
    )
    images = container.local_images(runtime)
    console.print(
        f"images:      {escape(', '.join(images)) if images else 'no vLLM image here'}", highlight=False
    )
