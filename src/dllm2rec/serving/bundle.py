"""Self-contained serving bundles: ``dllm2rec export`` writes one, ``Recommender.load`` reads it.

A bundle directory holds everything needed to answer requests, and nothing from the teacher or the LLM::

    BUNDLE/
      model.safetensors   student weights with every offset hook *folded* into plain tensors
      student.json        architecture (init kwargs) + meta; hooks = {} (so it is also a valid student checkpoint)
      items.json          item titles, index = item id (0..N-1)
      raw_ids.json        optional: the dataset's own item ids (meta.item_raw_ids: MovieLens ids, ASINs, ...), as
                          strings, index = item id; written when the dataset has them (older bundles lack it)
      model.onnx          optional: encoder+scorer, (seq [B, L], lens [B]) -> scores [B, N], dynamic batch axis
      manifest.json       format, model, dataset fingerprint, metrics it was selected with, folded hook specs,
                          ONNX parity, the serving index chosen for the catalogue size (``index``: kind, params,
                          reason; optional, older bundles lack it = exact), and the sha256 + size of every other file

Folding: a distilled student adds ``input_offset(ids)`` (e.g. collaborative embedding distillation,
``w * g(z[ids])``) to its ID embeddings and ``output_offset()`` to its output weight. Both depend only on item ids,
so they are evaluated once for all N+1 ids and added into ``item_emb.weight`` / ``out.weight``; the folded model
computes exactly the same function (up to float rounding) without the teacher's embeddings or the projector.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from dllm2rec import __version__
from dllm2rec.data.registry import load_or_prepare
from dllm2rec.data.schema import SeqDataset
from dllm2rec.errors import ArtifactError, DataError, Dllm2recError
from dllm2rec.serving.ann import chosen_index
from dllm2rec.serving.onnx_export import export_onnx, onnx_parity
from dllm2rec.students.base import SequentialStudent, build_student
from dllm2rec.students.checkpoint import load_student
from dllm2rec.utils.io import atomic_dir, read_json, try_read_json
from dllm2rec.utils.untrusted import check_onnx

BUNDLE_FORMAT = "dllm2rec-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
STUDENT_JSON = "student.json"
ITEMS = "items.json"
ONNX_FILE = "model.onnx"
RAW_IDS = "raw_ids.json"


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
    return read_json(path, ArtifactError)


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        return json.loads(json.dumps(x, default=str))


# --------------------------------------------------------------------------------------------- export
def _resolve_dataset(dataset: Any, meta: dict[str, Any], ckpt: Path):
    if isinstance(dataset, SeqDataset):
        return dataset
    if dataset is None:
        dataset = ((meta.get("config") or {}).get("data") or {}).get("path")
        if not dataset:
            raise Dllm2recError(f"{ckpt}: no dataset recorded in the checkpoint (meta.config.data.path); "
                                f"pass --dataset")
    return load_or_prepare(str(dataset))  # prepared dir or preset name


def export_bundle(source: str | Path, dataset: str | Path | Any, out: str | Path, *, which: str = "best",
                  onnx: bool = False, verify_dataset: bool = True, opset: int = 17,
                  index: str = "auto") -> dict[str, Any]:
    """Write a serving bundle from a run dir or checkpoint dir; returns the manifest.

    ``dataset`` is a prepared dataset directory (or preset name), a ``SeqDataset``, or ``None`` for the dataset
    recorded in the checkpoint (``meta.config.data.path``); titles + fingerprint come from it. With
    ``verify_dataset`` the checkpoint's ``meta.dataset_fingerprint`` (when present) must match the dataset.
    ``index``: ``"auto"`` records the default for the catalogue size (serving/ann.py ``choose_index``), or a kind.
    """
    from safetensors.torch import save_file

    ckpt, run_dir = resolve_checkpoint(source, which)
    try:
        model, info = load_student(ckpt)  # safetensors + JSON: nothing in a checkpoint can run code
    except Dllm2recError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one line, not a traceback
        which = ckpt / (WEIGHTS if "safetensor" in type(e).__name__.lower() else STUDENT_JSON)
        raise ArtifactError(f"{which}: cannot load the student checkpoint ({_first_line(e)})") from None
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
        results = try_read_json(run_dir / "results.json")

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
        "raw_ids": None,
        "index": chosen_index(index, model.n_items),  # built at load time; no index file in the bundle
    }
    raw_ids, why = dataset_raw_ids(ds)
    if why:
        manifest["raw_ids_skipped"] = why
    out = Path(out)
    with atomic_dir(out) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        bundle_meta = {k: v for k, v in meta.items() if k in ("dataset", "dataset_fingerprint", "metrics", "epoch")}
        bundle_meta["folded_hooks"] = sorted(folded)
        (tmp / STUDENT_JSON).write_text(json.dumps({"student": kwargs, "hooks": {}, "meta": _jsonable(bundle_meta)},
                                                   indent=2), encoding="utf-8")
        (tmp / ITEMS).write_text(json.dumps(list(ds.titles), ensure_ascii=False), encoding="utf-8")
        if raw_ids is not None:
            (tmp / RAW_IDS).write_text(json.dumps(raw_ids, ensure_ascii=False), encoding="utf-8")
            manifest["raw_ids"] = {"file": RAW_IDS, "count": len(raw_ids)}
        if onnx:
            export_onnx(model, tmp / ONNX_FILE, opset=opset)
            diff = onnx_parity(model, tmp / ONNX_FILE)
            manifest["onnx"] = {"file": ONNX_FILE, "opset": opset, "inputs": ["seq", "lens"], "outputs": ["scores"],
                                "parity_max_abs_diff": diff}
        manifest["files"] = {p.name: {"sha256": sha256_hex(p), "bytes": p.stat().st_size}
                             for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest


def dataset_raw_ids(ds: Any) -> tuple[list[str] | None, str | None]:
    """(the dataset's raw item ids as strings, None) or (None, why none are exported)."""
    raw = (ds.meta or {}).get("item_raw_ids")
    if raw is None:
        return None, None
    if not isinstance(raw, list) or len(raw) != ds.n_items:
        n = len(raw) if isinstance(raw, list) else type(raw).__name__
        return None, f"dataset meta.item_raw_ids has {n} entries for {ds.n_items} items; not exported"
    raw = [str(r) for r in raw]
    if len(set(raw)) != len(raw):
        return None, "dataset meta.item_raw_ids has duplicate ids; not exported"
    return raw, None


# --------------------------------------------------------------------------------------------- reading
class FileRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[StrictInt, Field(ge=0)] | None = None


class OnnxRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    file: StrictStr = ONNX_FILE


class RawIdsRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    file: StrictStr = RAW_IDS
    count: Annotated[StrictInt, Field(ge=0)] | None = None


class IndexRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: Literal["exact", "flat", "hnsw", "ivf"]
    params: dict[StrictStr, Annotated[StrictInt, Field(ge=1)]] = {}
    reason: StrictStr | None = None


class BundleManifest(BaseModel):
    """Schema of ``manifest.json``; unknown fields (provenance) are kept. ``files`` maps a path relative to the
    bundle directory (no absolute paths, no ``..``) to its sha256 and size."""

    model_config = ConfigDict(extra="allow")
    format: Literal["dllm2rec-bundle"]
    format_version: Annotated[StrictInt, Field(ge=1)]
    files: dict[StrictStr, FileRecord]
    model: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    onnx: OnnxRecord | None = None
    raw_ids: RawIdsRecord | None = None
    index: IndexRecord | None = None

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, FileRecord]) -> dict[str, FileRecord]:
        for name in files:
            _check_member_name(name)
        return files


def _check_member_name(name: str) -> None:
    parts = name.split("/")
    if (not name or "\\" in name or "\x00" in name or PurePosixPath(name).is_absolute()
            or PureWindowsPath(name).drive or any(p in ("", ".", "..") for p in parts)):
        raise ValueError(f"path {name[:80]!r} is not a plain relative path inside the bundle")


def _field(loc: tuple) -> str:
    out = ""
    for i, p in enumerate(loc):
        if isinstance(p, int) or (i == 1 and loc[0] == "files"):
            out += f"[{p!r}]" if isinstance(p, str) else f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "manifest"


def _member_path(bundle: Path, name: str) -> Path:
    """``bundle/name`` resolved (symlinks followed); refused unless it stays inside the bundle directory."""
    root = bundle.resolve()
    real = (bundle / name).resolve()
    if real != root and root not in real.parents:
        raise ArtifactError(f"{bundle / name}: resolves to {real}, outside the bundle directory; refused")
    return real


def _load_manifest(bundle: str | Path) -> tuple[Path, dict[str, Any]]:
    """(bundle dir, manifest dict validated against :class:`BundleManifest`); hashes are not checked here."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise ArtifactError(f"{bundle}: no such bundle directory")
    mpath = bundle / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: missing (not a dllm2rec bundle; create one with `dllm2rec export`)")
    m = _read_json(_member_path(bundle, MANIFEST))
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        got = m.get("format") if isinstance(m, dict) else None
        raise ArtifactError(f"{mpath}: field 'format' is {str(got)[:60]!r}, expected {BUNDLE_FORMAT!r}")
    v = m.get("format_version")
    if type(v) is int and v > BUNDLE_VERSION:
        raise ArtifactError(f"{mpath}: field 'format_version' {v} is newer than this dllm2rec supports "
                            f"({BUNDLE_VERSION})")
    try:
        BundleManifest.model_validate(m)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        got = err.get("input")
        shown = f" (got {type(got).__name__} {str(got)[:40]!r})" if err.get("type") != "value_error" else ""
        raise ArtifactError(f"{mpath}: field '{_field(tuple(err.get('loc', ())))}': {msg}{shown}") from None
    for name in (WEIGHTS, STUDENT_JSON, ITEMS):
        if name not in m["files"]:
            raise ArtifactError(f"{mpath}: field 'files' does not list {name}")
    if m.get("onnx") is not None and m["onnx"].get("file", ONNX_FILE) not in m["files"]:
        raise ArtifactError(f"{mpath}: field 'files' does not list {m['onnx'].get('file', ONNX_FILE)} "
                            f"(named by field 'onnx')")
    if m.get("raw_ids") is not None and m["raw_ids"].get("file", RAW_IDS) not in m["files"]:
        raise ArtifactError(f"{mpath}: field 'files' does not list {m['raw_ids'].get('file', RAW_IDS)} "
                            f"(named by field 'raw_ids')")
    return bundle, m


def read_manifest(bundle: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read ``manifest.json``, validate it (schema, paths confined to the bundle) and, with ``verify``, check the
    size and sha256 of every listed file."""
    bundle, m = _load_manifest(bundle)
    for name in m["files"]:
        p = _member_path(bundle, name)
        if not p.is_file():
            raise ArtifactError(f"{bundle / name}: missing (listed in {MANIFEST})")
        if verify:
            _check_hash(bundle / name, m["files"][name], sha256_hex(p), p.stat().st_size)
    return m


def _check_hash(path: Path, rec: dict[str, Any], got: str, size: int) -> None:
    if rec.get("bytes") is not None and size != rec["bytes"]:
        raise ArtifactError(f"{path}: {size} bytes, {MANIFEST} lists {rec['bytes']}; the bundle was modified")
    if got != rec["sha256"]:
        raise ArtifactError(f"{path}: sha256 {got[:16]}… does not match {MANIFEST} ({rec['sha256'][:16]}…); "
                            f"the bundle was modified")


def read_member(bundle: str | Path, manifest: dict[str, Any], name: str, verify: bool = True) -> bytes:
    """The bytes of bundle file ``name``: it must be listed in the manifest, stay inside the bundle, and (with
    ``verify``) match its size and sha256. Load from these bytes, so what was checked is what is used."""
    bundle = Path(bundle)
    rec = manifest["files"].get(name)
    if rec is None:
        raise ArtifactError(f"{bundle / name}: not listed in {MANIFEST} (field 'files'); every file the "
                            f"server loads must be listed and hash-checked (re-export the bundle)")
    p = _member_path(bundle, name)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ArtifactError(f"{bundle / name}: cannot read ({e.strerror or type(e).__name__})") from None
    if verify:
        _check_hash(bundle / name, rec, hashlib.sha256(data).hexdigest(), len(data))
    return data


def read_onnx(bundle: str | Path, manifest: dict[str, Any], verify: bool = True) -> bytes | None:
    """The bundle's verified ONNX model (checked by the untrusted-file gate), or None when it has none. A
    ``model.onnx`` on disk that the manifest does not list is refused, never loaded."""

    bundle = Path(bundle)
    name = optional_member(bundle, manifest, "onnx", ONNX_FILE, "an unverified model (re-export the bundle with --onnx)")
    return None if name is None else check_onnx(read_member(bundle, manifest, name, verify), bundle / name)


def optional_member(bundle: Path, manifest: dict[str, Any], key: str, default: str, what: str) -> str | None:
    """The file name of an optional bundle member (``manifest[key]["file"]``, or ``default`` when listed), or None
    when the bundle has none. A file by that name on disk that the manifest does not list is refused: every file
    the server loads is listed and hash-checked."""
    name = (manifest.get(key) or {}).get("file") or (default if default in manifest["files"] else None)
    if name is None and ((bundle / default).exists() or (bundle / default).is_symlink()):
        raise ArtifactError(f"{bundle / default}: not listed in {MANIFEST}; refusing to load {what}")
    return name


def _json_bytes(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ArtifactError(f"{path}: malformed JSON (nested too deeply)") from None


def _build_student(info: Any, weights: bytes, bundle: Path) -> SequentialStudent:
    from safetensors.torch import load as load_safetensors

    jpath, wpath = bundle / STUDENT_JSON, bundle / WEIGHTS
    kw = info.get("student") if isinstance(info, dict) else None
    if not isinstance(kw, dict) or not isinstance(kw.get("name"), str) or type(kw.get("n_items")) is not int:
        raise ArtifactError(f"{jpath}: field 'student' must be an object with 'name' (str) and 'n_items' (int)")
    if info.get("hooks"):
        raise ArtifactError(f"{jpath}: field 'hooks' must be empty in a bundle (hooks are folded at export)")
    kw = dict(kw)
    name, n_items = kw.pop("name"), kw.pop("n_items")
    try:
        model = build_student(name, n_items, **kw)
    except (TypeError, ValueError, KeyError, Dllm2recError) as e:
        raise ArtifactError(f"{jpath}: field 'student' cannot build the model ({_first_line(e)})") from None
    try:
        state = load_safetensors(weights)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ArtifactError(f"{wpath}: not a valid safetensors file ({_first_line(e)})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ArtifactError(f"{wpath}: does not match {STUDENT_JSON} ({_first_line(e)})") from None
    return model.eval()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0][:200]}" if s else type(e).__name__


def load_bundle(bundle: str | Path, verify: bool = True) -> tuple[SequentialStudent, list[str], dict[str, Any]]:
    """(folded student in eval mode, titles, manifest); every file is read once, from bytes that were verified."""
    bundle = Path(bundle)
    m = read_manifest(bundle, verify=verify)
    info = _json_bytes(read_member(bundle, m, STUDENT_JSON, verify), bundle / STUDENT_JSON)
    model = _build_student(info, read_member(bundle, m, WEIGHTS, verify), bundle)
    titles = _json_bytes(read_member(bundle, m, ITEMS, verify), bundle / ITEMS)
    if not isinstance(titles, list) or len(titles) != model.n_items:
        raise ArtifactError(f"{bundle / ITEMS}: expected a list of {model.n_items} titles, "
                            f"got {len(titles) if isinstance(titles, list) else type(titles).__name__}")
    titles = [str(t) for t in titles]
    try:
        "\n".join(titles).encode("utf-8")  # a lone surrogate ("\ud800" escape) could not be sent in a response
    except UnicodeEncodeError as e:
        raise ArtifactError(f"{bundle / ITEMS}: a title is not valid Unicode (character {e.start})") from None
    return model, titles, m
