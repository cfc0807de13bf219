"""Which variant of a profile runs on which GPUs, and why: the one rule for `--gpu`, `auto`, plan and matrix.

- A GPU class is named in any case ("h200" is H200) and kept as GPU_CLASSES spells it.
- A card (or a named class) the profile has no variant for is sized by its memory: the largest
  variant that fits, of the card's own platform first; the choice says which and why.
- A box with both NVIDIA and AMD GPUs is refused under `auto` (one vLLM build drives one platform):
  `--gpu CLASS` picks the platform, and the run is given that platform's GPUs only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.core.errors import PreflightError, UsageError
from orchestrator.gpus.classes import CPU, GPU_CLASSES, PLATFORM_NAMES, Gpu, canonical_class, platform_of
from orchestrator.profile.schema import Profile

log = logging.getLogger(__name__)
FIT_SLACK = 1.02  # a card reported a little under its class's memory still counts as that class


@dataclass(frozen=True)
class Choice:
    """The variant to run, the GPUs it may use (one platform), and why, where it is not the card's own."""

    variant: str
    gpus: tuple[Gpu, ...] = ()
    reason: str | None = None


def choose(profile: Profile, gpu: str, gpus: Sequence[Gpu]) -> Choice:
    """The variant for `--gpu` (auto, a class in any case, or cpu) on the GPUs found."""
    if gpu.strip().lower() == "auto":
        return _auto(profile, gpus)
    name = canonical_class(gpu)
    if name == CPU:
        return _named_variant(profile, CPU)
    if name is None:
        raise UsageError(
            f"profile {profile.name!r} has no variant {gpu!r}, and {gpu!r} is no GPU class",
            hint=f"its variants: {variant_list(profile)}",
        )
    mine = tuple(gpus)
    if len({g.platform for g in gpus}) > 1:  # a mixed box: the named class picks the platform
        mine = tuple(g for g in gpus if g.platform == platform_of(name))
    if name in profile.variants:
        return Choice(name, mine)
    own = [g.memory_total_mib for g in mine if g.gpu_class == name]
    memory = min(own) if own else GPU_CLASSES[name] * 1024
    fitted = fit(profile, memory, platform_of(name))
    if fitted is None:
        raise UsageError(
            f"profile {profile.name!r} has no variant {name!r}, and none of its variants fits "
            f"{name}'s {memory / 1024:.0f} GiB",
            hint=f"its variants: {variant_list(profile)}",
        )
    reason = f"profile {profile.name} has no {name} variant; using {fitted}, the largest that fits {name} ({memory / 1024:.0f} GiB)"
    log.info("%s", reason)
    return Choice(fitted, mine, reason)


def _named_variant(profile: Profile, variant: str) -> Choice:
    if variant not in profile.variants:
        raise UsageError(
            f"profile {profile.name!r} has no variant {variant!r}",
            hint=f"its variants: {variant_list(profile)}",
        )
    return Choice(variant)


def _auto(profile: Profile, gpus: Sequence[Gpu]) -> Choice:
    if not gpus:
        if CPU in profile.variants:
            return Choice(CPU)
        raise PreflightError(
            f"no GPU found and profile {profile.name!r} has no cpu variant",
            hint=f"its variants need: {variant_list(profile)}; try `mmdemo run cpu-tiny-omni`",
        )
    refuse_mixed(gpus)
    first = gpus[0]
    if first.gpu_class in profile.variants:
        return Choice(first.gpu_class, tuple(gpus))
    fitted = fit(profile, first.memory_total_mib, first.platform)
    if fitted is None:
        raise PreflightError(
            f"profile {profile.name!r} has no variant that fits {first.name} ({first.memory_total_gib:.0f} GiB)",
            hint=f"its variants: {variant_list(profile)}",
        )
    own = f"no {first.gpu_class} variant" if first.gpu_class else "no class of its own"
    reason = (
        f"GPU {first.index} ({first.name}, {first.memory_total_gib:.0f} GiB) has {own} in {profile.name}; "
        f"using {fitted}, the largest variant that fits its memory"
    )
    log.info("%s", reason)
    return Choice(fitted, tuple(gpus), reason)


def fit(profile: Profile, memory_mib: float, platform: str | None) -> str | None:
    """The largest supported GPU variant whose class (and need) fits the memory: the platform's own first."""
    fitting = []
    for name, variant in profile.variants.items():
        if name not in GPU_CLASSES or variant.unsupported:
            continue
        need = profile.requires.merged(variant.requires).gpu_memory_gib or 0
        if max(GPU_CLASSES[name], need) * 1024 <= memory_mib * FIT_SLACK:
            fitting.append((GPU_CLASSES[name], name))
    same = [f for f in fitting if platform_of(f[1]) == platform]
    return max(same or fitting)[1] if fitting else None


def sized_class(gpu: Gpu) -> str | None:
    """The card's class, or for a card no class names the largest class of its platform its memory holds."""
    if gpu.gpu_class is not None:
        return gpu.gpu_class
    fitting = [
        (memory, name)
        for name, memory in GPU_CLASSES.items()
        if platform_of(name) == gpu.platform and memory * 1024 <= gpu.memory_total_mib * FIT_SLACK
    ]
    return max(fitting)[1] if fitting else None


def refuse_mixed(gpus: Sequence[Gpu], how: str = "pass --gpu with one class") -> None:
    """Refuse GPUs of two platforms in one line: one vLLM build drives one platform."""
    platforms = dict.fromkeys(g.platform for g in gpus)
    if len(platforms) < 2:
        return
    parts = []
    for platform in platforms:
        mine = [g for g in gpus if g.platform == platform]
        classes = ", ".join(dict.fromkeys(g.gpu_class or g.name for g in mine))
        parts.append(f"{len(mine)} {PLATFORM_NAMES.get(platform, platform)} ({classes})")
    examples = " or ".join(dict.fromkeys(g.gpu_class for g in gpus if g.gpu_class))
    raise PreflightError(
        f"this machine has GPUs of two platforms, {' and '.join(parts)}, and one vLLM build drives one",
        hint=f"{how}, e.g. --gpu {examples}" if examples else how,
    )


def variant_list(profile: Profile) -> str:
    """The profile's variants with what each needs, for hints."""
    parts = []
    for name, variant in profile.variants.items():
        need = profile.requires.merged(variant.requires).gpu_memory_gib
        if variant.unsupported:
            parts.append(f"{name} (unsupported)")
        elif name == CPU or need is None:
            parts.append(name)
        else:
            parts.append(f"{name} (>= {need:g} GiB)")
    return ", ".join(parts) or "(none)"
