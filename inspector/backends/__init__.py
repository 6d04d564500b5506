"""Inference engines behind one seam: the :class:`Engine` protocol and an explicit backend registry.

One file per backend; heavy imports live inside the backend module, so the
rest of the runtime imports cleanly on a machine without them.
"""

from __future__ import annotations

from inspector.backends.base import BACKENDS, Engine, EngineError, open_engine

__all__ = ["BACKENDS", "Engine", "EngineError", "open_engine"]
