"""The leak-free carve of a folder's train split (engines.splits): whole groups, a tenth of each class,
and groups linked on first use, cached, and found again by the photographs' digest."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines import augment as au
from engines.splits import SHARE, carve, digest, train_groups
from inspector.tools.synthetic import ImpellerGenerator


def test_carve_deals_whole_groups_and_a_tenth_of_each_class():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], [400, 600])
    sizes = rng.integers(1, 30, size=200)
    groups = np.repeat(np.arange(len(sizes)), sizes)[: len(labels)]
    groups = np.where(labels == 1, groups + 10_000, groups)  # a group holds one class
    parts = carve(groups, labels, seed=0)
    allidx = np.concatenate(list(parts.values()))
    assert sorted(allidx.tolist()) == list(range(len(labels)))  # a partition
    side = {int(i): name for name, idx in parts.items() for i in idx}
    for g in np.unique(groups):
        assert len({side[int(i)] for i in np.nonzero(groups == g)[0]}) == 1
    for name in ("val", "calib"):
        for c, n in ((0, 400), (1, 600)):
            got = int((labels[parts[name]] == c).sum())
            assert n // SHARE <= got < n // SHARE + 30, (name, c, got)  # overshoot: at most one group
    assert all(
        np.array_equal(a, b) for a, b in zip(parts.values(), carve(groups, labels, 0).values(), strict=True)
    )
    assert not np.array_equal(parts["val"], carve(groups, labels, 1)["val"])


def test_groups_are_linked_on_first_use_then_read_from_the_cache(tmp_path: Path, monkeypatch):
    """A folder of generated parts, each photographed twice (the second a turned, mirrored copy): the
    copies share a group, different parts do not; the groups land in the cache under the folder's
    digest and are read back from there (a changed photograph changes the digest)."""
    from engines.data import _folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gen = ImpellerGenerator(seed=5)
    root = tmp_path / "set"
    for split in ("train", "test"):
        for cls in ("ok_front", "def_front"):
            (root / split / cls).mkdir(parents=True)
    for i in range(6):
        s = gen.sample(i)
        cls = "def_front" if s.label else "ok_front"
        img = s.image
        cv2.imwrite(str(root / "train" / cls / f"p{i}_a.png"), img)
        cv2.imwrite(
            str(root / "train" / cls / f"p{i}_b.png"), au.rotate(np.ascontiguousarray(img[:, ::-1]), 71.0)
        )
        cv2.imwrite(str(root / "test" / cls / f"p{i}.png"), img)
    data = str(root)
    _folder.cache_clear()
    files = _folder(data, "train")[2]
    groups = train_groups(data)
    by_name = {f.name: int(g) for f, g in zip(files, groups, strict=True)}
    for i in range(6):
        assert by_name[f"p{i}_a.png"] == by_name[f"p{i}_b.png"], i
    assert len({by_name[f"p{i}_a.png"] for i in range(6)}) == 6
    cached = list((tmp_path / "cache" / "line-inspector" / "splits").glob("*.json"))
    assert len(cached) == 1
    doc = json.loads(cached[0].read_text())
    assert doc["digest"] == digest(files, data) and doc["photographs"] == 12
    # Read back, not linked again: a marker group in the cached file shows through.
    doc["groups"] = [[n for g in doc["groups"] for n in g]]
    cached[0].write_text(json.dumps(doc))
    assert len(set(train_groups(data).tolist())) == 1
    # Another photograph under the same name: another digest, so the cache no longer applies.
    cv2.imwrite(str(files[0]), 255 - cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE))
    assert digest(files, data) != doc["digest"]
    _folder.cache_clear()


@pytest.mark.parametrize("argv", [["--help"]])
def test_splits_cli_teaches(argv, capsys):
    from engines.splits import main

    with pytest.raises(SystemExit):
        main(argv)
    assert "copies" in capsys.readouterr().out
