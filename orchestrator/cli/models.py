"""`mmdemo models list`: each tiny model, whether it is built, and what it serves beside what is run.

What a built model serves is what vLLM's probe says (probes/model_facts.py: the chat types its
modalities allow, the tasks its model class serves; ~10 s a model the first time, then cached per
model and vLLM version); what is run is its shipped profile's demos. A model not built is not probed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from orchestrator.core.errors import MMDemoError, ProfileError

if TYPE_CHECKING:
    from rich.console import Console


def cmd_list(args: argparse.Namespace, out: Console) -> int:
    """The table of the tiny models; 0."""
    from rich.table import Table

    from orchestrator.cli import terminal
    from orchestrator.model import tiny
    from orchestrator.model.autoprofile import DeriveRequest, probe_request
    from orchestrator.model.capabilities import capabilities, line
    from orchestrator.profile.schema import Profile, iter_profile_files, parse_profile_file
    from orchestrator.vllm.probe import probe

    profiles: dict[str, Profile] = {}
    for path in iter_profile_files(args.profiles_dir):
        try:
            shipped = parse_profile_file(path)
        except ProfileError:  # `mmdemo validate` names what is wrong with it
            continue
        if shipped.local_model and shipped.local_model not in profiles:
            profiles[shipped.local_model] = shipped
    table = Table(title="tiny models (`mmdemo models build NAME`); (run): the shipped profile runs it")
    for column in ("model", "built", "profile", "chat types", "tasks past chat"):
        table.add_column(column)
    for name in tiny.BUILDERS:
        profile = profiles.get(name)
        facts = None
        if tiny.is_built(name):
            trust = bool(profile and profile.serve.trust_remote_code)
            request = DeriveRequest(trust_remote_code=trust, vllm_bin=args.vllm_bin)
            try:
                facts = probe(probe_request(str(tiny.model_dir(name)), request))
            except MMDemoError as exc:  # no vLLM here, or the probe failed: the row says so
                table.add_row(name, "yes", profile.name if profile else "–", f"not probed: {exc}", "")
                continue
        chats = profile.chat_types if profile else ()
        tasks = [t.task for t in profile.tasks] if profile else []
        found = capabilities(facts if facts is not None and facts.error is None else None, chats, tasks)
        table.add_row(
            name,
            "yes" if tiny.is_built(name) else "no",
            profile.name if profile else "–",
            terminal.esc(line(found.chat_types.served, found.chat_types.run)),
            terminal.esc(line(found.tasks.served, found.tasks.run)),
        )
    out.print(table)
    return 0
