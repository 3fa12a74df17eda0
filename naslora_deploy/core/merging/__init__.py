"""Merging: ``merge`` and its fold strategies, recovery, measured fidelity, calibration
images, the report, ``MergeSpec``, ``merge_run`` (a run to a merged model) and the
merged files.

May import ``core.runs``, ``core.adapters.injection``, ``core.model`` and ``common`` (the top
sub-room of ``core``).
"""
