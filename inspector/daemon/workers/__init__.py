"""The daemon's worker processes: ingest, inference, publisher, on one base (:mod:`inspector.daemon.workers.base`)."""
