"""Timetables: which recordings a folder expects and whether each came (pure: no files, network, SQL or clock).

Its own room beside files/, studio/ and queue/ because it is none of them: the daemon feeds it calendar bytes
(from files/ or studio/) and arrivals (from queue/), and it answers with lectures and verdicts.
"""
