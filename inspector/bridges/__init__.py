"""PLC bridges: the daemon's verdict stream presented to a PLC (Modbus TCP, OPC UA).

A bridge is its own process (``inspector bridge modbus|opcua``, one systemd
unit each), a subscriber of the daemon's PUB socket like any other; the
fail-safe logic shared by both lives in :mod:`inspector.bridges.core`.
"""
