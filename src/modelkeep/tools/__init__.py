"""What the ``modelkeep`` command does, as plain functions: inspect, verify, diff, convert,
predict and plot saved models and checkpoints. The CLI only parses arguments and prints.

Example::

    from modelkeep.tools import describe, verify_paths
    describe("mysavedmodel")["format"]          # 'SavedModel'
    all(r.ok for r in verify_paths(["run/"]))   # every checkpoint of the run is intact
"""

from modelkeep.tools.convert import convert
from modelkeep.tools.diff import diff_paths, diff_states
from modelkeep.tools.inspect import describe
from modelkeep.tools.predict import predict_files
from modelkeep.tools.reading import read_state
from modelkeep.tools.runs import best_checkpoint, default_monitor, list_run
from modelkeep.tools.verify import VerifyResult, verify_paths

__all__ = [
    "VerifyResult",
    "best_checkpoint",
    "convert",
    "default_monitor",
    "describe",
    "diff_paths",
    "diff_states",
    "list_run",
    "predict_files",
    "read_state",
    "verify_paths",
]
