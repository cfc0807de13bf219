"""What the user named as a model: a profile, a model directory or a hub id; its derived profile, its
weights' sizes and prefetch into the HF cache, the locally built tiny models.

May import: launch/ and below.
"""
