"""The shared ground every stage stands on: errors, options, the environment (read once; the Hugging
Face variables resolved in hfenv), paths, atomic writes, background threads, the chat types, the
JSON-file cache.

May import: nothing of orchestrator outside core/.
"""
