"""Self-contained serving bundles: ``dllm2rec export`` writes one, ``Recommender.load`` reads it.

A bundle directory holds everything needed to answer requests, and nothing from the teacher or the LLM::

    BUNDLE/
      model.safetensors   student weights with every offset hook *folded* into plain tensors
      student.json        architecture (init kwargs) + meta; hooks = {} (so it is also a valid student checkpoint)
      items.json          item titles, index = item id (0..N-1)
      model.onnx          optional: encoder+scorer, (seq [B, L], lens [B]) -> scores [B, N], dynamic batch axis
      manifest.json       format, model, dataset fingerprint, metrics it was selected with, folded hook specs,
                          ONNX parity, and the sha256 + size of every other file

Folding: a distilled student adds ``input_offset(ids)`` (e.g. collaborative embedding distillation,
``w * g(z[ids])``) to its ID embeddings and ``output_offset()`` to its output weight. Both depend only on item ids,
so they are evaluated once for all N+1 ids and added into ``item_emb.weight`` / ``out.weight``; the folded model
computes exactly the same function (up to float rounding) without the teacher's embeddings or the projector.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

from dllm2rec.errors import ArtifactError, DataError, Dllm2recError
from dllm2rec.students.base import SequentialStudent

BUNDLE_FORMAT = "dllm2rec-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
STUDENT_JSON = "student.json"
ITEMS = "items.json"
ONNX_FILE = "model.onnx"


def sha256_hex(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- folding
@torch.no_grad()
def fold_hooks(model: SequentialStudent) -> dict[str, Any]:
    """Fold ``input_offset``/``output_offset`` into the plain embedding / output weight, in place.

    Returns the specs of the folded hooks (for provenance in the manifest); afterwards both hooks are ``None``.
    """
    folded: dict[str, Any] = {}
    inp = getattr(model, "input_offset", None)
    if inp is not None:
        ids = torch.arange(model.n_items + 1, device=model.item_emb.weight.device)
        off = inp(ids)
        if off.shape != model.item_emb.weight.shape:
            raise Dllm2recError(f"input_offset returned shape {tuple(off.shape)} for {model.n_items + 1} ids, "
                                f"expected {tuple(model.item_emb.weight.shape)}")
        model.item_emb.weight.add_(off.to(model.item_emb.weight.dtype))
        folded["input_offset"] = inp.spec() if hasattr(inp, "spec") else {"type": type(inp).__name__}
        model.input_offset = None
    outp = getattr(model, "output_offset", None)
    if outp is not None:
        off = outp()
        if off.shape != model.out.weight.shape:
            raise Dllm2recError(f"output_offset returned shape {tuple(off.shape)}, expected {tuple(model.out.weight.shape)}")
        model.out.weight.add_(off.to(model.out.weight.dtype))
        folded["output_offset"] = outp.spec() if hasattr(outp, "spec") else {"type": type(outp).__name__}
        model.output_offset = None
    return folded


# --------------------------------------------------------------------------------------------- sources
def resolve_checkpoint(source: str | Path, which: str = "best") -> tuple[Path, Path | None]:
    """A checkpoint dir (has student.json) or a run dir (has best/ and/or last/) -> (checkpoint dir, run dir)."""
    src = Path(source)
    if not src.exists():
        raise Dllm2recError(f"{src}: no such run or checkpoint directory")
    if (src / STUDENT_JSON).is_file():
        run = src.parent if (src.parent / "results.json").is_file() else None
        return src, run
    order = [which] + [w for w in ("best", "last") if w != which]
    for w in order:
        if (src / w / STUDENT_JSON).is_file():
            return src / w, src
    raise Dllm2recError(f"{src}: neither a student checkpoint (student.json) nor a run directory "
                        f"(best/ or last/ with student.json)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        return json.loads(json.dumps(x, default=str))


# --------------------------------------------------------------------------------------------- export
def _resolve_dataset(dataset: Any, meta: dict[str, Any], ckpt: Path):
    from dllm2rec.data.schema import SeqDataset

    if isinstance(dataset, SeqDataset):
        return dataset
    if dataset is None:
        dataset = ((meta.get("config") or {}).get("data") or {}).get("path")
        if not dataset:
            raise Dllm2recError(f"{ckpt}: no dataset recorded in the checkpoint (meta.config.data.path); "
                                f"pass --dataset")
    try:
        from dllm2rec.training.trainer import resolve_dataset  # prepared dir or preset name
    except ImportError:
        return SeqDataset.load(dataset)
    return resolve_dataset(str(dataset))


def export_bundle(source: str | Path, dataset: str | Path | Any, out: str | Path, *, which: str = "best",
                  onnx: bool = False, verify_dataset: bool = True, opset: int = 17) -> dict[str, Any]:
    """Write a serving bundle from a run dir or checkpoint dir; returns the manifest.

    ``dataset`` is a prepared dataset directory (or preset name), a ``SeqDataset``, or ``None`` for the dataset
    recorded in the checkpoint (``meta.config.data.path``); titles + fingerprint come from it. With
    ``verify_dataset`` the checkpoint's ``meta.dataset_fingerprint`` (when present) must match the dataset.
    """
    from safetensors.torch import save_file

    from dllm2rec.training.checkpoint import load_student
    from dllm2rec.utils.io import atomic_dir

    ckpt, run_dir = resolve_checkpoint(source, which)
    model, info = load_student(ckpt)
    meta = dict(info.get("meta") or {})
    ds = _resolve_dataset(dataset, meta, ckpt)
    fp = ds.fingerprint()
    if model.n_items != ds.n_items:
        raise DataError(f"{ckpt}: the student scores {model.n_items} items but dataset '{ds.name}' has {ds.n_items}")
    ck_fp = meta.get("dataset_fingerprint")
    if verify_dataset and ck_fp is not None and ck_fp != fp:
        raise DataError(f"{ckpt}: field 'meta.dataset_fingerprint' {ck_fp} does not match dataset '{ds.name}' "
                        f"({fp}); pass the dataset the model was trained on")
    folded = fold_hooks(model)
    model.eval()

    results = None
    if run_dir is not None and (run_dir / "results.json").is_file():
        try:
            results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            results = None

    from dllm2rec import __version__

    kwargs = model.init_kwargs()
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dllm2rec_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "model": {"name": kwargs["name"], "n_items": model.n_items, "max_len": model.max_len, "dim": model.dim,
                  "hidden_dim": model.hidden_dim, "init_kwargs": kwargs},
        "folded_hooks": _jsonable(folded),
        "dataset": {"name": ds.name, "fingerprint": fp, "n_items": ds.n_items, "max_len": ds.max_len,
                    "checkpoint_fingerprint": ck_fp},
        "selected": {"checkpoint": ckpt.name, "metrics": _jsonable(meta.get("metrics") or {}),
                     "epoch": meta.get("epoch"), "dataset": meta.get("dataset")},
        "source": {"checkpoint": str(ckpt.resolve()), "run_dir": str(run_dir.resolve()) if run_dir else None,
                   "checkpoint_sha256": sha256_hex(ckpt / WEIGHTS)},
        "config": _jsonable(meta.get("config")),
        "results": _jsonable(results) if isinstance(results, dict) else None,
        "onnx": None,
    }
    out = Path(out)
    with atomic_dir(out) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        bundle_meta = {k: v for k, v in meta.items() if k in ("dataset", "dataset_fingerprint", "metrics", "epoch")}
        bundle_meta["folded_hooks"] = sorted(folded)
        (tmp / STUDENT_JSON).write_text(json.dumps({"student": kwargs, "hooks": {}, "meta": _jsonable(bundle_meta)},
                                                   indent=2), encoding="utf-8")
        (tmp / ITEMS).write_text(json.dumps(list(ds.titles), ensure_ascii=False), encoding="utf-8")
        if onnx:
            from dllm2rec.serving.onnx_export import export_onnx, onnx_parity

            export_onnx(model, tmp / ONNX_FILE, opset=opset)
            diff = onnx_parity(model, tmp / ONNX_FILE)
            manifest["onnx"] = {"file": ONNX_FILE, "opset": opset, "inputs": ["seq", "lens"], "outputs": ["scores"],
                                "parity_max_abs_diff": diff}
        manifest["files"] = {p.name: {"sha256": sha256_hex(p), "bytes": p.stat().st_size}
                             for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest


# --------------------------------------------------------------------------------------------- reading
def read_manifest(bundle: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read and (optionally) verify a bundle's manifest: format, and the sha256 of every listed file."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise ArtifactError(f"{bundle}: no such bundle directory")
    mpath = bundle / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: missing (not a dllm2rec bundle; create one with `dllm2rec export`)")
    m = _read_json(mpath)
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise ArtifactError(f"{mpath}: field 'format' is {m.get('format') if isinstance(m, dict) else None!r}, "
                            f"expected {BUNDLE_FORMAT!r}")
    if int(m.get("format_version", 0)) > BUNDLE_VERSION:
        raise ArtifactError(f"{mpath}: field 'format_version' {m['format_version']} is newer than this dllm2rec "
                            f"supports ({BUNDLE_VERSION})")
    for name in (WEIGHTS, STUDENT_JSON, ITEMS):
        if name not in m.get("files", {}):
            raise ArtifactError(f"{mpath}: field 'files' does not list {name}")
    if verify:
        for name, rec in m["files"].items():
            p = bundle / name
            if not p.is_file():
                raise ArtifactError(f"{p}: missing (listed in {MANIFEST})")
            got = sha256_hex(p)
            if got != rec["sha256"]:
                raise ArtifactError(f"{p}: sha256 {got[:16]}… does not match {MANIFEST} ({rec['sha256'][:16]}…); "
                                    f"the bundle was modified")
    return m


def load_bundle(bundle: str | Path, verify: bool = True) -> tuple[SequentialStudent, list[str], dict[str, Any]]:
    """(folded student in eval mode, titles, manifest)."""
    from dllm2rec.training.checkpoint import load_student

    bundle = Path(bundle)
    m = read_manifest(bundle, verify=verify)
    model, _ = load_student(bundle)
    titles = _read_json(bundle / ITEMS)
    if not isinstance(titles, list) or len(titles) != model.n_items:
        raise ArtifactError(f"{bundle / ITEMS}: expected a list of {model.n_items} titles, "
                            f"got {len(titles) if isinstance(titles, list) else type(titles).__name__}")
    return model, [str(t) for t in titles], m
