"""ONNX export of a student's encoder+scorer and an onnxruntime scorer.

The exported graph is ``(seq int64 [B, L], lens int64 [B]) -> scores float32 [B, N]`` with a dynamic batch axis;
L is fixed to the student's ``max_len`` (serving always pads to it). Hooks must be folded first
(``bundle.fold_hooks``) so the graph holds only plain tensors. Uses the TorchScript-based exporter
(``dynamo=False``), which needs no ``onnxscript``.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dllm2rec.errors import MissingDependencyError
from dllm2rec.students.base import SequentialStudent
from dllm2rec.utils.untrusted import check_onnx


class EncoderScorer(nn.Module):
    """``scores = encode(seq, lens) @ W^T + b`` as one module (the graph that is exported / scripted)."""

    def __init__(self, model: SequentialStudent):
        super().__init__()
        self.model = model

    def forward(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.model.score_all(self.model.encode(seq, lens))


def example_inputs(model: SequentialStudent, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    L, N = model.max_len, model.n_items
    lens = torch.randint(1, L + 1, (batch,), generator=g)
    seq = torch.randint(0, N, (batch, L), generator=g)
    seq[torch.arange(L)[None, :] >= lens[:, None]] = N
    return seq, lens


def export_onnx(model: SequentialStudent, path: str | Path | io.BytesIO, opset: int = 17) -> None:
    if model.input_offset is not None or model.output_offset is not None:
        raise ValueError("fold the offset hooks (dllm2rec.serving.bundle.fold_hooks) before exporting to ONNX")
    model = model.eval()
    seq, lens = example_inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                EncoderScorer(model).eval(), (seq, lens), path if isinstance(path, io.BytesIO) else str(path),
                dynamo=False, opset_version=opset, input_names=["seq", "lens"], output_names=["scores"],
                dynamic_axes={"seq": {0: "batch"}, "lens": {0: "batch"}, "scores": {0: "batch"}},
                do_constant_folding=True,
            )


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("the ONNX path needs onnxruntime: pip install 'dllm2rec[onnx]'") from None
    return ort


class OnnxScorer:
    """onnxruntime session for an exported encoder+scorer; ``__call__(seq, lens)`` (numpy int64) -> numpy scores.

    Outputs are written into a preallocated buffer through IO binding (no per-call allocation of [B, N]).
    """

    def __init__(self, model_bytes_or_path: bytes | str | Path, n_items: int, max_batch: int = 1024,
                 threads: int | None = None):
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1

        if isinstance(model_bytes_or_path, bytes):
            src, label = model_bytes_or_path, "model.onnx"
        else:
            src, label = Path(model_bytes_or_path).read_bytes(), str(model_bytes_or_path)
        # the gate: standard operators only, no external data; the session gets exactly the checked bytes
        self.session = ort.InferenceSession(check_onnx(src, label), so, providers=["CPUExecutionProvider"])
        self.n_items = int(n_items)
        self.input_names = {i.name for i in self.session.get_inputs()}  # Caser ignores lens: pruned from the graph
        self._out = np.empty((max_batch, self.n_items), dtype=np.float32)
        self._binding = self.session.io_binding()

    def __call__(self, seq: np.ndarray, lens: np.ndarray) -> np.ndarray:
        B = seq.shape[0]
        if B > self._out.shape[0]:
            self._out = np.empty((B, self.n_items), dtype=np.float32)
        out = self._out[:B]
        b = self._binding
        b.bind_cpu_input("seq", np.ascontiguousarray(seq))
        if "lens" in self.input_names:
            b.bind_cpu_input("lens", np.ascontiguousarray(lens))
        b.bind_output("scores", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self.session.run_with_iobinding(b)
        return out


def onnx_parity(model: SequentialStudent, onnx_model: str | Path | bytes, batches: tuple[int, ...] = (1, 7, 64),
                seed: int = 0) -> float:
    """Max |eager - onnxruntime| over random histories at several batch sizes."""
    scorer = OnnxScorer(onnx_model, model.n_items, max_batch=max(batches))
    worst = 0.0
    for i, B in enumerate(batches):
        seq, lens = example_inputs(model, B, seed=seed + i)
        with torch.inference_mode():
            ref = model.score_all(model.encode(seq, lens)).numpy()
        got = scorer(seq.numpy(), lens.numpy())
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def onnx_bytes(model: SequentialStudent, opset: int = 17) -> bytes:
    buf = io.BytesIO()
    export_onnx(model, buf, opset=opset)
    return buf.getvalue()
