"""Bundle export: manifest + hashes, run-dir resolution, dataset checks, tamper detection, hook folding."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from dllm2rec.data import SeqDataset, make_split
from dllm2rec.errors import ArtifactError, DataError, Dllm2recError
from dllm2rec.serving.bundle import export_bundle, fold_hooks, load_bundle, read_manifest, sha256_hex
from dllm2rec.serving.recommender import Recommender
from dllm2rec.students import build_student
from dllm2rec.students.hooks import register_hook
from dllm2rec.students.checkpoint import load_student, save_student

N, L = 40, 5


def make_dataset(n=N, L=L, seed=0) -> SeqDataset:
    rng = np.random.default_rng(seed)
    hs = [rng.integers(0, n, rng.integers(1, L + 1)).tolist() for _ in range(20)]
    sp = make_split(hs, rng.integers(0, n, 20), n, L)
    return SeqDataset("tiny", n, L, [f"title {i}" for i in range(n)], {"train": sp, "valid": sp, "test": sp})


def save_run(tmp_path, ds, name="sasrec", metrics=None, **kw):
    torch.manual_seed(0)
    model = build_student(name, ds.n_items, max_len=ds.max_len, dim=16, **kw)
    run = tmp_path / "run"
    meta = {"dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
            "metrics": metrics or {"valid/full/NDCG@20": 0.25}, "config": {"lr": 1e-3}}
    save_student(model, run / "best", meta=meta)
    save_student(model, run / "last", meta={**meta, "metrics": {"valid/full/NDCG@20": 0.2}})
    (run / "results.json").write_text(json.dumps({"test/full/NDCG@20": 0.24}))
    return run, model


# ----------------------------------------------------------------------------- a test hook (like CED offsets)
class _InOffset(nn.Module):
    """offset(ids) = w * tanh(z[ids] @ P), zero at PAD: the shape of collaborative embedding distillation."""

    def __init__(self, n_items: int, dim: int, zdim: int = 8):
        super().__init__()
        self.n_items, self.dim, self.zdim = n_items, dim, zdim
        self.register_buffer("z", torch.randn(n_items + 1, zdim))
        self.proj = nn.Linear(zdim, dim)
        self.w = nn.Parameter(torch.tensor(0.7))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.w * torch.tanh(self.proj(self.z[ids]))
        return out * (ids != self.n_items).unsqueeze(-1).to(out.dtype)

    def spec(self) -> dict:
        return {"type": "test_serving_in", "n_items": self.n_items, "dim": self.dim, "zdim": self.zdim}


class _OutOffset(nn.Module):
    def __init__(self, n_items: int, hidden: int):
        super().__init__()
        self.n_items, self.hidden = n_items, hidden
        self.delta = nn.Parameter(torch.randn(n_items, hidden) * 0.3)

    def forward(self) -> torch.Tensor:
        return self.delta * 0.5

    def spec(self) -> dict:
        return {"type": "test_serving_out", "n_items": self.n_items, "hidden": self.hidden}


@register_hook("test_serving_in")
def _build_in(spec, state, prefix):
    return _InOffset(spec["n_items"], spec["dim"], spec["zdim"])


@register_hook("test_serving_out")
def _build_out(spec, state, prefix):
    return _OutOffset(spec["n_items"], spec["hidden"])


# ----------------------------------------------------------------------------- tests
def test_export_run_dir_manifest_hashes_and_selection(tmp_path):
    ds = make_dataset()
    run, _ = save_run(tmp_path, ds)
    m = export_bundle(run, ds, tmp_path / "bundle")
    b = tmp_path / "bundle"
    assert m["format"] == "dllm2rec-bundle"
    assert m["selected"]["checkpoint"] == "best"
    assert m["selected"]["metrics"] == {"valid/full/NDCG@20": 0.25}
    assert m["dataset"]["fingerprint"] == ds.fingerprint() and m["dataset"]["name"] == "tiny"
    assert m["results"] == {"test/full/NDCG@20": 0.24}
    assert set(m["files"]) == {"model.safetensors", "student.json", "items.json"}
    for name, rec in m["files"].items():
        assert rec["sha256"] == sha256_hex(b / name) and len(rec["sha256"]) == 64
    assert json.loads((b / "items.json").read_text()) == ds.titles
    assert json.loads((b / "manifest.json").read_text()) == m
    # the bundle is itself a plain (hook-free) student checkpoint
    model, info = load_student(b)
    assert model.input_offset is None and info["hooks"] == {}
    assert not list(tmp_path.glob(".bundle*"))  # no temp dirs left behind (atomic write)


def test_export_last_and_checkpoint_dir(tmp_path):
    ds = make_dataset()
    run, _ = save_run(tmp_path, ds)
    m = export_bundle(run, ds, tmp_path / "b1", which="last")
    assert m["selected"]["checkpoint"] == "last" and m["selected"]["metrics"]["valid/full/NDCG@20"] == 0.2
    m = export_bundle(run / "best", ds, tmp_path / "b2")
    assert m["selected"]["checkpoint"] == "best" and m["source"]["run_dir"] is not None


def test_export_checks_dataset(tmp_path):
    ds = make_dataset()
    run, _ = save_run(tmp_path, ds)
    other = make_dataset(seed=1)
    with pytest.raises(DataError, match="dataset_fingerprint"):
        export_bundle(run, other, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    export_bundle(run, other, tmp_path / "bundle", verify_dataset=False)  # explicit override
    with pytest.raises(DataError, match="scores 40 items but dataset"):
        export_bundle(run, make_dataset(n=41), tmp_path / "b2", verify_dataset=False)
    with pytest.raises(Dllm2recError, match="neither a student checkpoint"):
        export_bundle(tmp_path, ds, tmp_path / "b3")
    with pytest.raises(Dllm2recError, match="no such run"):
        export_bundle(tmp_path / "nope", ds, tmp_path / "b3")


def test_tampered_or_foreign_bundle_is_rejected(tmp_path):
    ds = make_dataset()
    run, _ = save_run(tmp_path, ds)
    export_bundle(run, ds, tmp_path / "bundle")
    titles = json.loads((tmp_path / "bundle" / "items.json").read_text())
    titles[0] = "changed"
    (tmp_path / "bundle" / "items.json").write_text(json.dumps(titles))
    with pytest.raises(ArtifactError, match="items.json: sha256"):
        read_manifest(tmp_path / "bundle")
    read_manifest(tmp_path / "bundle", verify=False)
    with pytest.raises(ArtifactError, match="not a dllm2rec bundle"):
        load_bundle(run / "best")
    with pytest.raises(ArtifactError, match="no such bundle"):
        load_bundle(tmp_path / "missing")


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "caser"])
def test_folding_hooks_gives_identical_scores(tmp_path, name):
    ds = make_dataset()
    torch.manual_seed(0)
    model = build_student(name, N, max_len=L, dim=16).eval()
    model.input_offset = _InOffset(N, 16)
    model.output_offset = _OutOffset(N, model.hidden_dim)
    save_student(model, tmp_path / "ck", meta={"dataset_fingerprint": ds.fingerprint()})
    m = export_bundle(tmp_path / "ck", ds, tmp_path / "bundle")
    assert set(m["folded_hooks"]) == {"input_offset", "output_offset"}
    assert m["folded_hooks"]["input_offset"]["type"] == "test_serving_in"

    sp = ds["test"]
    seq, lens = torch.from_numpy(sp.seq), torch.from_numpy(sp.len)
    with torch.no_grad():
        ref = model(seq, lens)
    folded, titles, _ = load_bundle(tmp_path / "bundle")
    assert folded.input_offset is None and folded.output_offset is None
    assert not any(k.startswith(("input_offset", "output_offset")) for k in folded.state_dict())
    with torch.no_grad():
        got = folded(seq, lens)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the Recommender path (buffers, cached item matrix) gives the same scores
    rec = Recommender.load(tmp_path / "bundle")
    torch.testing.assert_close(rec.scores(sp.histories()), ref, atol=1e-5, rtol=1e-5)


def test_fold_hooks_in_place_equivalence():
    torch.manual_seed(1)
    model = build_student("sasrec", N, max_len=L, dim=16).eval()
    model.input_offset = _InOffset(N, 16)
    seq = torch.tensor([[1, 2, 3, N, N], [4, 5, 6, 7, 8]])
    lens = torch.tensor([3, 5])
    with torch.no_grad():
        ref = model(seq, lens)
        specs = fold_hooks(model)
        got = model(seq, lens)
    assert list(specs) == ["input_offset"]
    torch.testing.assert_close(got, ref)


def test_folding_real_collaborative_embedding_hooks(tmp_path):
    """The distillation's own hooks (teacher embeddings D=96 + projector) fold away; no teacher tensor ships."""
    emb = pytest.importorskip("dllm2rec.distill.embedding")
    ds = make_dataset()
    torch.manual_seed(0)
    model = build_student("sasrec", N, max_len=L, dim=16).eval()
    z = torch.randn(N, 96)
    model.input_offset = emb.TeacherInputOffset.from_artifacts(z, 16, weight=0.5, projector="mlp", mlp_hidden=32)
    model.output_offset = emb.TeacherOutputOffset.from_artifacts(z, 16, weight=0.3)
    save_student(model, tmp_path / "ck", meta={"dataset_fingerprint": ds.fingerprint()})
    m = export_bundle(tmp_path / "ck", ds, tmp_path / "bundle")
    assert m["folded_hooks"]["input_offset"]["type"] == "teacher-input-offset"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bundle" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "teacher_emb" in k or "offset" in k]
    sp = ds["test"]
    with torch.no_grad():
        ref = model(torch.from_numpy(sp.seq), torch.from_numpy(sp.len))
    rec = Recommender.load(tmp_path / "bundle")
    torch.testing.assert_close(rec.scores(sp.histories()), ref, atol=1e-5, rtol=1e-5)
