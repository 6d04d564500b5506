import cv2
import numpy as np
import pytest

from inspector.tools.folder import DatasetError, FolderDataset, class_of, read_gray


def _write(path, value=100, size=300):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size), value, np.uint8))


def test_casting_layout_reads(tmp_path):
    _write(tmp_path / "train" / "def_front" / "cast_def_0_1.jpeg", 50)
    _write(tmp_path / "train" / "ok_front" / "cast_ok_0_1.jpeg", 150)
    _write(tmp_path / "train" / "ok_front" / "cast_ok_0_2.png", 150, size=512)
    ds = FolderDataset.scan(tmp_path, "train")
    frames, labels = ds.load()
    assert frames.shape == (3, 300, 300) and frames.dtype == np.uint8
    assert sorted(labels.tolist()) == [0, 0, 1]


def test_class_names():
    assert class_of("def_front") == 1 and class_of("ok_front") == 0 and class_of("NG") == 1
    with pytest.raises(DatasetError, match="neither good"):
        class_of("misc")


def test_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        FolderDataset.scan(tmp_path / "nope", "train")
    (tmp_path / "train" / "ok_front").mkdir(parents=True)
    (tmp_path / "train" / "def_front").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images"):
        FolderDataset.scan(tmp_path, "train")
    with pytest.raises(DatasetError, match="no split 'test'"):
        FolderDataset.scan(tmp_path, "test")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="cannot read image"):
        read_gray(bad)
