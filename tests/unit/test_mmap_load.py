"""``SeqDataset.load(mmap=True)`` / ``TeacherArtifacts.load(mmap=True)``: same content as the normal readers, arrays
backed by the file (zero copy), and a file that cannot be mapped falls back to the normal reader."""
import numpy as np

from dllm2rec.data.schema import SeqDataset
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.controls import random_teacher
from dllm2rec.utils.mmap import is_mapped


def test_dataset_mmap_equals_normal_load(tiny_dataset_dir):
    a, b = SeqDataset.load(tiny_dataset_dir), SeqDataset.load(tiny_dataset_dir, mmap=True)
    assert a.fingerprint() == b.fingerprint() and a.titles == b.titles
    for s in a.splits:
        assert np.array_equal(a[s].seq, b[s].seq) and np.array_equal(a[s].target, b[s].target)
        assert is_mapped(b[s].seq) and is_mapped(b[s].target)
        assert not is_mapped(a[s].seq)


def test_compressed_split_falls_back(tiny_dataset_dir):
    f = tiny_dataset_dir / "valid.npz"
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(f, **arrays)  # a compressed member cannot be mapped
    b = SeqDataset.load(tiny_dataset_dir, mmap=True)
    assert not is_mapped(b["valid"].seq) and is_mapped(b["train"].seq)
    assert np.array_equal(b["valid"].seq, arrays["seq"])


def test_teacher_mmap_equals_normal_load(tmp_path, tiny_dataset):
    random_teacher(tiny_dataset, dim=16).save(tmp_path / "t", tiny_dataset)
    a = TeacherArtifacts.load(tmp_path / "t", tiny_dataset)
    b = TeacherArtifacts.load(tmp_path / "t", tiny_dataset, mmap=True)
    assert is_mapped(b.item_emb) and not is_mapped(a.item_emb)
    assert b.topk_ids.dtype == np.int64 and b.covered.dtype == bool
    for k in ("item_emb", "topk_ids", "topk_dist", "covered"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
