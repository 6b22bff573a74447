"""What the ``modelkeep`` command does, as plain functions: inspect, verify, diff, convert,
predict and plot saved models and checkpoints. The CLI only parses arguments and prints.

Example::

    from modelkeep.tools import describe, verify_paths
    describe("mysavedmodel")["format"]          # 'SavedModel'
    all(r.ok for r in verify_paths(["run/"]))   # every checkpoint of the run is intact
"""

