"""Before launch: each demo's prompt tokens counted by vLLM's own renderer and held against the profile.

May import: model/ and below.
"""
