"""The one gate for reading files that can run code when loaded.

Every read of a user-supplied file whose format can execute code on load goes through a function here:

* pickles (``pandas.read_pickle``, ``pickle.load``) — refused unless the caller passes ``allow=True``, which must
  come from the user's explicit flag (``--allow-pickle``) on that command; presets and defaults never pass it;
* ``torch.load`` — always ``weights_only=True`` (torch's restricted unpickler: tensors, dicts, lists, numbers);
  a full unpickle only with ``allow=True``;
* ``numpy.load`` — ``allow_pickle=False`` unless ``allow=True``;
* YAML — only ``yaml.safe_load`` (no flag can widen it);
* ONNX — the model is read once, checked (standard operator domains only, no external-data references) and
  handed to onnxruntime as bytes; dllm2rec never registers custom-operator libraries, so no flag widens it.

A refusal is an :class:`UntrustedFileError`: one line naming the file and the flag, exit status 2 on the CLI.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dllm2rec.errors import ArtifactError, DataError, MissingDependencyError

PICKLE_FLAG = "--allow-pickle"
# operator domains of the standard ONNX operator sets (the exporter emits only the default one)
ONNX_STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


class UntrustedFileError(DataError, ArtifactError):
    """A file was not read because reading it could run code (or it uses features dllm2rec never enables)."""


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0]}" if s else type(e).__name__


def refusal(path: str | Path, what: str = "a pickle", flag: str = PICKLE_FLAG) -> UntrustedFileError:
    """The one-line refusal for ``path`` (``what`` says which format), naming the flag that allows it."""
    return UntrustedFileError(f"{path}: is {what}, which can run arbitrary code when loaded; refused "
                              f"(pass {flag} only if you trust this file)")


def read_pickle(path: str | Path, *, allow: bool, flag: str = PICKLE_FLAG, what: str = "a pandas pickle") -> Any:
    """``pandas.read_pickle(path)`` if the user allowed it, else :func:`refusal`. Failures are one line."""
    if allow is not True:
        raise refusal(path, what, flag)
    import pandas as pd

    try:
        return pd.read_pickle(path)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise DataError(f"{path}: malformed pickle ({_first_line(e)})") from None


def load_pickle(path: str | Path, *, allow: bool, flag: str = PICKLE_FLAG) -> Any:
    """``pickle.load`` of ``path`` if the user allowed it, else :func:`refusal`."""
    if allow is not True:
        raise refusal(path, "a pickle", flag)
    import pickle

    try:
        with open(path, "rb") as f:
            return pickle.load(f)  # noqa: S301 - the user passed the flag for this file
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: malformed pickle ({_first_line(e)})") from None


def torch_load(path: str | Path, *, allow: bool = False, flag: str | None = None, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain containers only); a full unpickle only with
    ``allow=True``. A file that needs more than the restricted loader is refused, naming ``flag`` when the command
    has one (``None``: nothing can widen it)."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol ..." from the restricted unpickler
            return torch.load(path, map_location=map_location, weights_only=allow is not True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        glob = next((ln for ln in lines if "GLOBAL" in ln), None)
        if allow is not True and glob is not None:  # the file names a Python callable: what a code payload needs
            how = f"pass {flag} only if you trust this file" if flag else "only tensors and plain containers are read"
            raise UntrustedFileError(f"{path}: holds Python objects beyond tensors ({glob.rstrip('.')}), which can "
                                     f"run arbitrary code when loaded; refused ({how})") from None
        why = next((ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else type(e).__name__)
        raise ArtifactError(f"{path}: cannot read as a torch tensor file ({why})") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; report one line
        raise ArtifactError(f"{path}: cannot read as a torch file ({_first_line(e)})") from None


def np_load(path: str | Path, *, allow: bool = False, flag: str = PICKLE_FLAG) -> Any:
    """``numpy.load`` with ``allow_pickle`` only when the user allowed it; object arrays are refused otherwise."""
    import numpy as np

    try:
        return np.load(path, allow_pickle=allow is True)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise refusal(path, "a numpy file with pickled objects", flag) from None
        raise ArtifactError(f"{path}: cannot read as a numpy file ({_first_line(e)})") from None
    except (OSError, EOFError) as e:
        raise ArtifactError(f"{path}: cannot read as a numpy file ({_first_line(e)})") from None


def yaml_load(text: str, source: str | Path = "<yaml>") -> Any:
    """``yaml.safe_load`` (plain scalars, lists, mappings); there is no unsafe variant."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"{source}: malformed YAML ({_first_line(e)})") from None


def check_onnx(model: bytes, source: str | Path = "model.onnx") -> bytes:
    """Refuse an ONNX model that uses non-standard operator domains (custom ops) or external-data files; returns
    the same bytes (load exactly these into onnxruntime, so what was checked — and hashed — is what runs)."""
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("checking an ONNX model needs onnx: pip install 'dllm2rec[onnx]'") from None
    try:
        proto = onnx.ModelProto.FromString(model)
    except Exception as e:  # noqa: BLE001 - a protobuf decode error
        raise ArtifactError(f"{source}: not a valid ONNX model ({_first_line(e)})") from None
    for imp in proto.opset_import:
        if imp.domain not in ONNX_STANDARD_DOMAINS:
            raise UntrustedFileError(f"{source}: imports custom operator domain {imp.domain!r}; refused (dllm2rec "
                                     f"runs only standard ONNX operators and never loads custom-op libraries)")
    graphs = [proto.graph]
    nodes = [n for f in proto.functions for n in f.node]
    while graphs:
        g = graphs.pop()
        for t in list(g.initializer) + [a.t for n in g.node for a in n.attribute if a.HasField("t")]:
            if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
                raise UntrustedFileError(f"{source}: tensor {t.name!r} refers to an external data file; refused "
                                         f"(a bundle's ONNX model must be self-contained)")
        for n in g.node:
            nodes.append(n)
            graphs.extend(a.g for a in n.attribute if a.HasField("g"))
            for a in n.attribute:
                graphs.extend(a.graphs)
    for n in nodes:
        if n.domain not in ONNX_STANDARD_DOMAINS:
            raise UntrustedFileError(f"{source}: node {n.name or n.op_type!r} uses custom operator "
                                     f"{n.domain}.{n.op_type}; refused (standard ONNX operators only)")
    return model
