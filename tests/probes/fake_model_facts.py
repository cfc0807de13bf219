"""A stand-in for orchestrator/probes/model_facts.py: canned facts, and switches for each failure.

FAKE_PROBE_RUNS: a file that gets one line per run. FAKE_PROBE_MODE: `ok` (default), `garbage` (not
JSON, a last stderr line), `hang` (a grandchild that sleeps, then hang), `config-error`,
`unsupported`.
"""

import json
import os
import subprocess
import sys
import time

request = json.load(sys.stdin)
with open(os.environ["FAKE_PROBE_RUNS"], "a") as runs:
    runs.write(request["model"] + "\n")
mode = os.environ.get("FAKE_PROBE_MODE", "ok")
facts = {
    "model": request["model"],
    "revision": request.get("revision"),
    "vllm": "0.32.0",
    "error": None,
    "architectures": ["LlavaForConditionalGeneration"],
    "supported": True,
    "is_multimodal": True,
    "modalities": {"image": None},
    "demo_tokens": {"image": 16},
    "video_tokens": {"8": 64},
    "max_model_len": 4096,
    "chat_template": True,
    "timings": {"total_s": 0.01},
}
if mode == "garbage":
    print("Traceback ...", file=sys.stderr)
    print("RuntimeError: vLLM exploded", file=sys.stderr)
    print("not json")
    sys.exit(1)
if mode == "hang":
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(60)
if mode == "config-error":
    facts.update(error="OSError: the hub is down", error_kind="config")
if mode == "unsupported":
    facts.update(error="not supported", error_kind="unsupported-architecture", supported=False)
print(json.dumps(facts))
