"""The daemon's processes: the supervisor, its three workers, the frame ring and their messages.

Everything here runs inside ``inspector serve``; the tools around the daemon
(camera simulator, listener, recorder, generator) live in ``inspector.tools``.
"""
