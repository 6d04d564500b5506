"""Ids and reasons from the wire are printed with control characters escaped (issue #27: `archive list`
and `inspector listen` printed raw terminal escapes from camera ids)."""

from __future__ import annotations

from pathlib import Path

from inspector.archive.store import Archive
from inspector.cli import main
from inspector.terminal import printable
from inspector.tools.listen import format_verdict

HOSTILE = "cam\x1b]0;owned\x07\x1b[2J\u202egpj.exe"


def test_printable_escapes_control_and_direction_characters_and_keeps_the_rest():
    assert printable(HOSTILE) == "cam\\x1b]0;owned\\x07\\x1b[2J\\u202egpj.exe"
    assert printable("Kamera-Süd 7") == "Kamera-Süd 7"
    assert printable(None) == "None" and printable(42) == "42"
    assert printable("a\x9bb\x7f") == "a\\x9bb\\x7f"  # C1 CSI and DEL too


def test_listen_lines_carry_no_raw_control_characters():
    v = {
        "seq": 1, "camera_id": HOSTILE, "frame_id": "f\x1b[1A", "verdict": "ERROR",
        "defect_score": None, "noise_type": None, "reason": "bad\x1b[31m", "latency_ms": {"total": 1.0},
    }  # fmt: skip
    line = format_verdict(v)
    assert "\x1b" not in line and "\u202e" not in line and "\\x1b" in line


def test_archive_list_carries_no_raw_control_characters(tmp_path: Path, capsys):
    a = Archive(tmp_path)
    a.add(
        {"seq": 1, "camera_id": HOSTILE, "frame_id": "f\x1b[1A", "verdict": "ERROR", "reason": "x\x07",
         "published_ns": 1_800_000_000_000_000_000},
        None, None,
    )  # fmt: skip
    a.close()
    assert main(["archive", "list", "--set", f"archive.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "cam\\x1b]0;" in out  # cut to the column, escape kept visible
