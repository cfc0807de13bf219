"""The shared ground every stage stands on: errors, options, the environment (read once), paths,
atomic writes, background threads, the chat types, the JSON-file cache.

May import: nothing of orchestrator outside core/.
"""
