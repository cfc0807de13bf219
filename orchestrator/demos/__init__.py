"""The demo requests: the example client's chat types as payloads, and the streaming runner.

May import: media/, profile/, record/, core/ (and below).
"""
