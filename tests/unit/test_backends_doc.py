"""docs/backends.md's tables are engines/default/backends.json's figures (written by
``python -m engines.backends_report``), not typed ones: a changed digit in either fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "backends.md").read_text()
RESULT = json.loads((REPO / "engines" / "default" / "backends.json").read_text())
RUNS = {r["label"]: r for r in RESULT["runs"]}
COLUMNS = [  # the headline table's columns, left to right
    "float32 set, ORT f32",
    "float32 set, OpenVINO f32",
    "float32 set, OpenVINO bf16",
    "int8 set, ORT int8",
    "int8 set, OpenVINO int8",
]


def table_rows(first_cell: str) -> list[list[str]]:
    rows = []
    for line in DOC.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(first_cell):
            rows.append(cells)
    return rows


def number(cell: str) -> float:
    return float(re.match(r"[-+]?\d+(\.\d+)?", cell).group())  # type: ignore[union-attr]


def test_the_headline_table_is_the_measured_one():
    keys = RUNS[COLUMNS[0]]["figures"]["headline"]
    checked = 0
    for key in keys:
        doc_key = "noise-type accuracy, each main level" if key.startswith("noise-type accuracy") else key
        (row,) = table_rows(doc_key.replace(" @", " @"))
        for col, cell in zip(COLUMNS, row[1:], strict=True):
            run = RUNS[col]
            assert number(cell) == round(run["figures"]["headline"][key], 2), (key, col, cell)
            d = run.get("deltas", {}).get("headline_points", {}).get(key)
            if d is not None:
                assert f"({d:+.2f})" in cell, (key, col, cell)
            checked += 1
    assert checked == len(keys) * len(COLUMNS)
    for name, fmt in (("PSNR", "{:.2f}"), ("SSIM", "{:.4f}")):
        (row,) = table_rows(f"autoencoder {name}")
        key = "psnr_mean" if name == "PSNR" else "ssim_mean"
        assert row[1:] == [fmt.format(RUNS[c]["figures"]["autoencoder"][key]) for c in COLUMNS], row


def test_the_speed_table_is_the_measured_one():
    speed = RESULT["speed"]["batch 8"]
    labels = {
        "ORT f32": "float32 set, ORT f32",
        "OpenVINO f32": "float32 set, OpenVINO f32",
        "OpenVINO bf16": "float32 set, OpenVINO bf16",
        "ORT int8 (INT8 set)": "int8 set, ORT int8",
        "OpenVINO int8 (INT8 set)": "int8 set, OpenVINO int8",
    }
    for doc_label, run in labels.items():
        (row,) = [
            r
            for r in table_rows(doc_label)
            if r[0] == doc_label and len(r) == 4 and all(re.fullmatch(r"[\d.]+", c) for c in r[1:])
        ]
        for stage, cell in zip(("noise", "denoise", "defect"), row[1:], strict=True):
            assert abs(number(cell) - speed[run][stage]["min"]) <= 0.051 * max(1, number(cell) / 10), (
                run,
                stage,
            )


def test_the_agreement_figures_quoted_are_the_measured_ones():
    bf16 = RUNS["float32 set, OpenVINO bf16"]["agreement"]
    assert f"max 0.{round(bf16['defect_scores']['max_difference'] * 1000):03d}" in DOC
    n = bf16["noise_calls"]
    assert f"{n['identical']}/{n['frames']} identical" in DOC
    i8 = RUNS["int8 set, OpenVINO int8"]["agreement"]
    assert f"at most {i8['denoise']['max_grey_levels']}" in DOC


def test_where_the_time_goes_is_bench_profile_json():
    """docs/backends.md's profile tables and sentences are ``python -m bench.profile --render``'s output."""
    import sys

    sys.path.insert(0, str(REPO))
    from bench.profile import BEGIN, END, render

    block = DOC.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block.strip() == render(json.loads((REPO / "bench" / "profile.json").read_text())).strip()
