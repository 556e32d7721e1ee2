import json

import numpy as np
import pytest

from dllm2rec.data.schema import SeqDataset, make_split
from dllm2rec.errors import DataError


def _ds(n_items=5, max_len=3):
    tr = make_split([[0, 1], [1, 2, 3]], [2, 4], pad=n_items, max_len=max_len)
    va = make_split([[2]], [3], pad=n_items, max_len=max_len)
    te = make_split([[3, 4]], [0], pad=n_items, max_len=max_len)
    return SeqDataset("t", n_items, max_len, [f"i{i}" for i in range(n_items)], {"train": tr, "valid": va, "test": te})


def test_make_split_right_pads_and_truncates():
    s = make_split([[0, 1, 2, 3, 4]], [1], pad=9, max_len=3)
    assert s.seq.tolist() == [[2, 3, 4]] and s.len.tolist() == [3]
    s = make_split([[7]], [1], pad=9, max_len=3)
    assert s.seq.tolist() == [[7, 9, 9]]


def test_roundtrip_and_fingerprint(tmp_path):
    ds = _ds()
    ds.save(tmp_path / "d")
    back = SeqDataset.load(tmp_path / "d")
    assert back.fingerprint() == ds.fingerprint()
    assert np.array_equal(back["train"].seq, ds["train"].seq)
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left


def test_tampered_dataset_is_refused(tmp_path):
    ds = _ds()
    ds.save(tmp_path / "d")
    items = json.loads((tmp_path / "d" / "items.json").read_text())
    items[0] = "changed"
    (tmp_path / "d" / "items.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match="fingerprint"):
        SeqDataset.load(tmp_path / "d")


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.splits["train"].target.__setitem__(0, 7), "field 'target' = 7"),
    (lambda d: d.splits["train"].seq.__setitem__((0, 0), 11), "item id 11"),
    (lambda d: d.splits.__setitem__("valid", d.splits["valid"].subset(np.array([], dtype=int))), "is empty"),
    (lambda d: d.splits["train"].seq.__setitem__((0, 2), 1), "not right-padded"),
])
def test_validate_errors_name_the_field(mutate, match):
    ds = _ds()
    mutate(ds)
    with pytest.raises(DataError, match=match):
        ds.validate("somefile")


def test_history_longer_than_max_len_refused():
    ds = _ds(max_len=3)
    ds.max_len = 2
    with pytest.raises(DataError, match="length 3 > max_len 2"):
        ds.validate("x")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(DataError, match="manifest.json: missing"):
        SeqDataset.load(tmp_path)
    ds = _ds()
    ds.save(tmp_path / "d")
    (tmp_path / "d" / "train.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="train.npz: unreadable"):
        SeqDataset.load(tmp_path / "d")


def test_atomic_dir_gives_ordinary_file_modes(tmp_path):
    """safetensors' save_file writes 0600; everything an atomic_dir commits is 0644/0755 (minus the umask)."""
    import os

    import torch
    from safetensors.torch import save_file

    from dllm2rec.utils.io import atomic_dir

    mask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "bundle") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
            (tmp / "sub").mkdir()
            (tmp / "sub" / "x.json").write_text("{}")
    finally:
        os.umask(mask)
    assert oct((tmp_path / "bundle" / "model.safetensors").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "bundle" / "sub").stat().st_mode & 0o777) == oct(0o755)
