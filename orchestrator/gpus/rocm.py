"""AMD GPUs through AMD's own tools: the `amdsmi` library where installed, else `amd-smi` or `rocm-smi` JSON.

Two questions, asked the same three ways: which GPUs (name, memory, driver) and which processes
hold GPU memory (the teardown waits until the killed ones no longer do). Indices are the tools'
own, which are the HIP/ROCR device indices a cell's visible-devices variables take. The formats:

- amdsmi (ROCm/amdsmi py-interface): amdsmi_get_processor_handles, amdsmi_get_gpu_asic_info
  (market_name, device_id), amdsmi_get_gpu_vram_usage (vram_total/vram_used in MB),
  amdsmi_get_gpu_driver_info, amdsmi_get_gpu_process_list (dicts with "pid").
- `amd-smi static --asic --vram --driver --json` and `amd-smi metric --mem-usage --json`: a list of
  per-GPU objects (ROCm 6.x) or {"gpu_data": [...]} (ROCm 7.x), sizes as {"value", "unit"}.
  `amd-smi process --json`: per GPU a "process_list" of {"process_info": {...,"pid"}} (or a string
  when there are none).
- `rocm-smi --showproductname --showmeminfo vram --json`: {"card0": {"Card Series", "Card Model",
  "VRAM Total Memory (B)", "VRAM Total Used Memory (B)"}}; `rocm-smi --showpids --json`:
  {"system": {"PID<n>": "name, gpus, vram, sdma, cu"}} (rocm_smi.py showPids).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from orchestrator.gpus.classes import ROCM, Gpu

log = logging.getLogger(__name__)

Run = Callable[[Sequence[str]], str | None]
TIMEOUT_S = 20.0

# PCI device ids of the Instinct cards, for tools that report "N/A" as the market name
# (from vLLM's rocm.py _ROCM_DEVICE_ID_NAME_MAP and Ray's amd_gpu.py amd_product_dict).
DEVICE_NAMES = {
    "0x74a1": "AMD Instinct MI300X",
    "0x74b5": "AMD Instinct MI300X VF",
    "0x74a9": "AMD Instinct MI300X HF",
    "0x74bd": "AMD Instinct MI300X HF",
    "0x74a5": "AMD Instinct MI325X",
    "0x74b9": "AMD Instinct MI325X VF",
    "0x7408": "AMD Instinct MI250X",
    "0x740c": "AMD Instinct MI250X/MI250",
    "0x740f": "AMD Instinct MI210",
    "0x74a0": "AMD Instinct MI300A",
}
_PID_KEY = re.compile(r"^PID\s*(\d+)$", re.IGNORECASE)


def detect(run: Run | None = None) -> list[Gpu] | None:
    """AMD GPUs: amdsmi, else amd-smi, else rocm-smi; None when none of AMD's tools is here."""
    run = run or _run
    gpus = _detect_amdsmi()
    if gpus is None and shutil.which("amd-smi"):
        static = run(["amd-smi", "static", "--asic", "--vram", "--driver", "--json"])
        metric = run(["amd-smi", "metric", "--mem-usage", "--json"])
        gpus = parse_amd_smi(static, metric) if static else None
    if gpus is None and shutil.which("rocm-smi"):
        out = run(["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"])
        gpus = parse_rocm_smi(out) if out else None
    return gpus


def holders(run: Run | None = None) -> set[int] | None:
    """PIDs holding memory on an AMD GPU (amdsmi, amd-smi, rocm-smi); None when no tool can tell."""
    run = run or _run
    pids = _amdsmi_pids()
    if pids is None and shutil.which("amd-smi"):
        out = run(["amd-smi", "process", "--json"])
        pids = parse_amd_smi_process(out) if out is not None else None
    if pids is None and shutil.which("rocm-smi"):
        out = run(["rocm-smi", "--showpids", "--json"])
        pids = parse_rocm_smi_pids(out) if out is not None else None
    return pids


# -- the amdsmi library ---------------------------------------------------------------------------


def _amdsmi() -> Any:
    try:
        import amdsmi
    except ImportError:
        return None
    try:
        amdsmi.amdsmi_init()
    except Exception as exc:  # AmdSmiLibraryException: no amdgpu driver loaded here
        log.debug("amdsmi unavailable: %s", exc)
        return None
    return amdsmi


def _detect_amdsmi() -> list[Gpu] | None:
    smi = _amdsmi()
    if smi is None:
        return None
    try:
        gpus = []
        for index, handle in enumerate(smi.amdsmi_get_processor_handles()):
            asic = smi.amdsmi_get_gpu_asic_info(handle)
            vram = smi.amdsmi_get_gpu_vram_usage(handle)  # MB
            total, used = int(vram["vram_total"]), int(vram["vram_used"])
            try:
                driver = str(smi.amdsmi_get_gpu_driver_info(handle).get("driver_version") or "") or None
            except Exception:
                driver = None
            name = _market_name(asic.get("market_name"), asic.get("device_id"))
            gpus.append(Gpu(index, name, total, total - used, driver, platform=ROCM, detected_by="amdsmi"))
        return gpus
    except Exception as exc:
        log.debug("amdsmi failed: %s", exc)
        return None
    finally:
        _shut_down(smi)


def _amdsmi_pids() -> set[int] | None:
    smi = _amdsmi()
    if smi is None:
        return None
    try:
        pids: set[int] = set()
        for handle in smi.amdsmi_get_processor_handles():
            for proc in smi.amdsmi_get_gpu_process_list(handle):
                pid = proc.get("pid") if isinstance(proc, dict) else None
                if pid is None:  # older bindings list process handles: ask for each one's info
                    pid = smi.amdsmi_get_gpu_process_info(handle, proc).get("pid")
                if pid:
                    pids.add(int(pid))
        return pids
    except Exception as exc:
        log.debug("amdsmi process list failed: %s", exc)
        return None
    finally:
        _shut_down(smi)


def _shut_down(smi: Any) -> None:
    try:
        smi.amdsmi_shut_down()
    except Exception as exc:
        log.debug("amdsmi_shut_down: %s", exc)


# -- the command-line tools -----------------------------------------------------------------------


def _run(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s failed: %s", argv[0], exc)
        return None
    return done.stdout


def _entries(text: str | None) -> list[dict[str, Any]]:
    """amd-smi's per-GPU objects, from its ROCm 6 list or its ROCm 7 {"gpu_data": [...]} form."""
    try:
        data = json.loads(text or "")
    except ValueError:
        return []
    if isinstance(data, dict):
        data = data.get("gpu_data", [data])
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def _mib(value: Any) -> int | None:
    """A size amd-smi printed ({"value": 196592, "unit": "MB"}, "196592 MB" or a number) in MiB."""
    unit = "MB"
    if isinstance(value, dict):
        value, unit = value.get("value"), str(value.get("unit") or "MB")
    if isinstance(value, str):
        parts = value.split()
        value, unit = parts[0] if parts else "", parts[1] if len(parts) > 1 else unit
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}.get(unit.upper(), 1)
    return int(number * scale)


def parse_amd_smi(static: str | None, metric: str | None = None) -> list[Gpu]:
    """`amd-smi static --asic --vram --driver --json` (+ `metric --mem-usage --json` for free memory)."""
    used: dict[int, int] = {}
    for entry in _entries(metric):
        mem = entry.get("mem_usage") or {}
        if isinstance(mem, dict) and (mib := _mib(mem.get("used_vram"))) is not None:
            used[int(entry.get("gpu", len(used)))] = mib
    gpus = []
    for position, entry in enumerate(_entries(static)):
        index = int(entry.get("gpu", position))
        asic, vram, driver = (entry.get(k) or {} for k in ("asic", "vram", "driver"))
        total = _mib(vram.get("size")) if isinstance(vram, dict) else None
        if total is None:
            continue
        free = total - used[index] if index in used else None
        version = driver.get("version") if isinstance(driver, dict) else None
        name = _market_name(asic.get("market_name"), asic.get("device_id"))
        gpus.append(Gpu(index, name, total, free, _known(version), platform=ROCM, detected_by="amd-smi"))
    return gpus


def parse_rocm_smi(out: str | None) -> list[Gpu]:
    """`rocm-smi --showproductname --showmeminfo vram --json`: one "cardN" object per GPU."""
    try:
        data = json.loads(out or "")
    except ValueError:
        return []
    gpus = []
    for key, card in data.items() if isinstance(data, dict) else ():
        match = re.fullmatch(r"card(\d+)", key)
        if not match or not isinstance(card, dict):
            continue
        fields = {k.lower(): v for k, v in card.items()}
        try:
            total = int(fields["vram total memory (b)"]) // 2**20
        except (KeyError, ValueError):
            continue
        used = str(fields.get("vram total used memory (b)") or "")
        free = total - int(used) // 2**20 if used.isdigit() else None
        name = _market_name(fields.get("card series"), fields.get("card model") or fields.get("device id"))
        gpus.append(Gpu(int(match.group(1)), name, total, free, platform=ROCM, detected_by="rocm-smi"))
    return sorted(gpus, key=lambda g: g.index)


def parse_amd_smi_process(out: str | None) -> set[int] | None:
    """PIDs in `amd-smi process --json`; None when the output is not amd-smi's JSON."""
    try:
        json.loads(out or "")
    except ValueError:
        return None
    pids: set[int] = set()
    for entry in _entries(out):
        for item in entry.get("process_list") or []:
            info = item.get("process_info") if isinstance(item, dict) else None
            if isinstance(info, dict) and str(info.get("pid", "")).isdigit():
                pids.add(int(info["pid"]))
    return pids


def parse_rocm_smi_pids(out: str | None) -> set[int] | None:
    """PIDs in `rocm-smi --showpids --json` ("PID<n>" keys); None when the output is not JSON."""
    try:
        data = json.loads(out or "")
    except ValueError:
        return None
    return {int(m.group(1)) for key in _keys(data) if (m := _PID_KEY.match(key))}


def _keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _keys(value)


def _known(value: Any) -> str | None:
    text = str(value or "").strip()
    return None if text in ("", "N/A") else text


def _market_name(name: Any, device_id: Any) -> str:
    """The card's name; from its PCI device id where the tool says N/A (some VFs and old ROCm)."""
    if (known := _known(name)) is not None:
        return known
    did = str(device_id or "").lower()
    return DEVICE_NAMES.get(did, f"AMD GPU {did}" if did else "AMD GPU")
