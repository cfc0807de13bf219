"""The run on one screen (`run_session`), its targets (a server mmdemo launches, or one already running)
and what every step shares (the record, the events, the stop).

May import: budget/ and below.
"""
