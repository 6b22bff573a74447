"""Serving: fast inference path, micro-batching, version watcher, REST and gRPC front ends.

Example::

    from modelkeep.serving import ServeConfig, serve
    serve(ServeConfig(path="runs/exp1", name="tutorial"))
"""

from modelkeep.serving.server import ServeConfig, serve

__all__ = ["ServeConfig", "serve"]
