"""The profile: the YAML schema parsed into frozen objects, which variant fits which GPUs, expected words.

May import: gpus/, record/, vllm/, core/.
"""
