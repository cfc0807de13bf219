"""Tiny random multimodal model builders (standalone scripts run under the vLLM venv)."""
