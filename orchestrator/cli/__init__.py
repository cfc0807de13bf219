"""The `mmdemo` command: the option table and parsers, the terminal (nothing else prints), doctor, init,
validate.

May import: everything below.
"""
