"""A malicious pickle (its ``__reduce__`` creates a marker file) fed to every command that reads user files.

The marker must never appear, and each command exits 2 with a one-line ``error: ...`` naming the file (and the
flag, where one exists). Runs the real CLI entry point (``dllm2rec.cli.main``) in-process.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dllm2rec.cli import main
from dllm2rec.data import SeqDataset, make_split
from dllm2rec.students import build_student
from dllm2rec.students.checkpoint import save_student
from conftest import Payload  # the shared pickle payload (and the `marker` fixture)

N, L = 12, 4




def evil_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(Payload(marker), f)
    return path


def refused(capsys, argv: list[str], *needles: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def official_dir(root: Path, marker: Path, pickled=("train_data.df", "Val_data.df", "Test_data.df")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in pickled:
        evil_pickle(root / name, marker)
    (root / "id2name.txt").write_text("\n".join(f"{i}::artist {i}" for i in range(N)) + "\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------- datasets (pandas pickles)
def test_data_prepare_lastfm_with_source_refuses_pickles(tmp_path, marker, capsys):
    src = official_dir(tmp_path / "src", marker)
    refused(capsys, ["data", "prepare", "lastfm", "--source", str(src), "--out", str(tmp_path / "p")],
            "train_data.df", "--allow-pickle")
    assert not (tmp_path / "p").exists()


def test_data_prepare_lastfm_default_source_refuses_pickles(tmp_path, marker, capsys, monkeypatch):
    official_dir(tmp_path / "shared" / "data" / "lastfm-llara", marker)  # the preset's default ../shared/... source
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    refused(capsys, ["data", "prepare", "lastfm"], "train_data.df", "--allow-pickle")
    assert not (tmp_path / "work" / "prepared").exists()
    # what `train --data lastfm` / experiments reach: the same refusal, saying how to prepare it once
    from dllm2rec.data.registry import load_or_prepare
    from dllm2rec.utils.untrusted import UntrustedFileError

    with pytest.raises(UntrustedFileError, match=r"data prepare lastfm --allow-pickle"):
        load_or_prepare("lastfm")


@pytest.mark.parametrize("fmt,extra", [("official", []), ("auto", []), ("official", ["--splits", "valid,test"])])
def test_data_import_refuses_pickles(tmp_path, marker, capsys, fmt, extra):
    src = official_dir(tmp_path / "src", marker)
    refused(capsys, ["data", "import", fmt, str(src), "--out", str(tmp_path / "o")] + extra,
            ".df", "--allow-pickle")


def test_optional_statis_pickle_is_skipped_not_read(tmp_path, marker, capsys):
    src = official_dir(tmp_path / "src", marker, pickled=("data_statis.df",))
    sp = "seq,len_seq,next\n"
    for name in ("train_data.csv", "val_data.csv", "test_data.csv"):
        (src / name).write_text(sp + f'"[1, 2, {N}, {N}]",2,3\n"[4, {N}, {N}, {N}]",1,5\n', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["data", "import", "official", str(src), "--out", str(tmp_path / "o"), "--max-len", str(L)])
    assert e.value.code == 0, capsys.readouterr().err


def test_prepared_dataset_with_pickled_npz_is_refused(tmp_path, marker, capsys):
    sp = make_split([[1, 2], [3]], [3, 4], N, L)
    SeqDataset("d", N, L, [f"t{i}" for i in range(N)], {"train": sp, "valid": sp, "test": sp}).save(tmp_path / "d")
    np.savez(tmp_path / "d" / "train.npz", seq=np.array([Payload(marker)], dtype=object))
    refused(capsys, ["data", "stats", str(tmp_path / "d")], "train.npz")


def test_yaml_config_cannot_construct_python_objects(tmp_path, marker, capsys):
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'train: !!python/object/apply:builtins.open ["{marker}", "w"]\n', encoding="utf-8")
    refused(capsys, ["train", "--config", str(cfg), "--run-dir", str(tmp_path / "run")], "evil.yaml")


# ------------------------------------------------------------------------------------- teacher files (torch.load)
@pytest.fixture()
def dataset_dir(tmp_path):
    sp = make_split([[1, 2], [3]], [3, 4], N, L)
    return SeqDataset("d", N, L, [f"t{i}" for i in range(N)], {"train": sp, "valid": sp, "test": sp}).save(
        tmp_path / "d")


@pytest.mark.parametrize("kind", ["torch.save", "plain pickle"])
def test_teacher_import_refuses_pickled_objects(tmp_path, marker, capsys, dataset_dir, kind):
    src = tmp_path / "teacher"
    src.mkdir()
    if kind == "torch.save":
        torch.save({"emb": Payload(marker)}, src / "all_embeddings.pt")
    else:
        evil_pickle(src / "all_embeddings.pt", marker)
    (src / "myrank_train.txt").write_text("1 2\n3 4\n")
    (src / "confidence_train.txt").write_text("0.1 0.2\n0.1 0.2\n")
    refused(capsys, ["teacher", "import", str(src), "--dataset", str(dataset_dir), "--out", str(tmp_path / "a")],
            "all_embeddings.pt")


# ------------------------------------------------------------------------------------- bundles (serve / export)
@pytest.fixture()
def bundle(tmp_path, dataset_dir):
    from dllm2rec.serving.bundle import export_bundle

    ds = SeqDataset.load(dataset_dir)
    torch.manual_seed(0)
    save_student(build_student("gru4rec", N, max_len=L, dim=8), tmp_path / "run" / "best",
                 meta={"dataset_fingerprint": ds.fingerprint()})
    export_bundle(tmp_path / "run", ds, tmp_path / "bundle")
    return tmp_path / "bundle"


@pytest.fixture()
def no_uvicorn(monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started on a bad bundle"))


def _relist(bundle: Path, name: str) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / name).read_bytes()
    m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_serve_onnx_refuses_an_unlisted_model(bundle, marker, capsys, no_uvicorn):
    evil_pickle(bundle / "model.onnx", marker)
    refused(capsys, ["serve", str(bundle), "--backend", "onnx"], "model.onnx", "not listed")


def test_serve_onnx_refuses_a_listed_non_onnx_file(bundle, marker, capsys, no_uvicorn):
    pytest.importorskip("onnx")
    evil_pickle(bundle / "model.onnx", marker)
    _relist(bundle, "model.onnx")  # listed and hashed, still not an ONNX model
    refused(capsys, ["serve", str(bundle), "--backend", "onnx"], "model.onnx")


def test_serve_refuses_pickled_weights(bundle, marker, capsys, no_uvicorn):
    evil_pickle(bundle / "model.safetensors", marker)
    _relist(bundle, "model.safetensors")
    refused(capsys, ["serve", str(bundle)], "model.safetensors")


def test_bench_refuses_an_unlisted_model(bundle, marker, capsys):
    evil_pickle(bundle / "model.onnx", marker)
    refused(capsys, ["bench", str(bundle), "--backends", "onnx", "--no-http", "--iters", "1", "--batch-iters", "1"],
            "model.onnx", "not listed")


def test_export_refuses_a_pickled_checkpoint(tmp_path, marker, capsys, dataset_dir):
    run = tmp_path / "run2"
    save_student(build_student("gru4rec", N, max_len=L, dim=8), run / "best")
    shutil.copy(evil_pickle(tmp_path / "evil.bin", marker), run / "best" / "model.safetensors")
    refused(capsys, ["export", str(run), "--dataset", str(dataset_dir), "--out", str(tmp_path / "b")],
            "model.safetensors")
