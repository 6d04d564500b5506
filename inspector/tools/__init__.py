"""Tools around the daemon, never part of it: the camera simulator, the verdict listener, the
recorder, the procedural impeller generator and the photograph folder reader."""
