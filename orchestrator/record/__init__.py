"""The one typed record of a run (report.json and its JSON Schema) and the run directories.

May import: core/.
"""
