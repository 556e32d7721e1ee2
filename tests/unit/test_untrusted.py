"""The one gate for files that can run code on load (``dllm2rec.utils.untrusted``), and that nothing bypasses it."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dllm2rec.errors import ArtifactError, DataError, Dllm2recError
from dllm2rec.utils import untrusted
from dllm2rec.utils.untrusted import UntrustedFileError
from conftest import Payload  # the shared pickle payload (and the `marker` fixture)

SRC = Path(__file__).resolve().parents[2] / "src" / "dllm2rec"




def one_line(e: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, Dllm2recError), msg
    for n in needles:
        assert n in msg, (n, msg)


def test_pickles_are_refused_without_the_flag(tmp_path, marker):
    p = tmp_path / "train_data.df"
    p.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UntrustedFileError) as e:
        untrusted.read_pickle(p, allow=False)
    one_line(e, "train_data.df", "--allow-pickle", "arbitrary code")
    assert isinstance(e.value, DataError) and isinstance(e.value, ArtifactError)  # callers catch either
    with pytest.raises(UntrustedFileError):
        untrusted.load_pickle(p, allow=False)
    for truthy in (1, "yes", [1]):  # only the literal True (from the user's flag) opens the gate
        with pytest.raises(UntrustedFileError):
            untrusted.read_pickle(p, allow=truthy)  # type: ignore[arg-type]


def test_pickles_load_with_the_flag(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"seq": [[1, 2]], "next": [3]})
    df.to_pickle(tmp_path / "ok.df")
    assert untrusted.read_pickle(tmp_path / "ok.df", allow=True).equals(df)
    (tmp_path / "bad.df").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as e:
        untrusted.read_pickle(tmp_path / "bad.df", allow=True)
    one_line(e, "bad.df", "malformed pickle")


def test_torch_load_is_weights_only(tmp_path, marker):
    torch.save({"emb": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UntrustedFileError) as e:
        untrusted.torch_load(tmp_path / "evil.pt")
    one_line(e, "evil.pt", "beyond tensors")
    with pytest.raises(UntrustedFileError) as e:
        untrusted.torch_load(tmp_path / "evil.pt", flag="--trust-state")
    one_line(e, "--trust-state")
    t = torch.arange(6.0).reshape(2, 3)
    torch.save({"emb": t}, tmp_path / "ok.pt")
    assert torch.equal(untrusted.torch_load(tmp_path / "ok.pt")["emb"], t)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ArtifactError) as e:
        untrusted.torch_load(tmp_path / "junk.pt")
    one_line(e, "junk.pt")


def test_np_load_refuses_object_arrays(tmp_path, marker):
    np.save(tmp_path / "evil.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(UntrustedFileError) as e:
        untrusted.np_load(tmp_path / "evil.npy")
    one_line(e, "evil.npy", "--allow-pickle")
    np.save(tmp_path / "ok.npy", np.arange(3))
    assert untrusted.np_load(tmp_path / "ok.npy").tolist() == [0, 1, 2]


def test_yaml_is_safe_only(marker):
    with pytest.raises(DataError) as e:
        untrusted.yaml_load(f'x: !!python/object/apply:builtins.open ["{marker}", "w"]', "evil.yaml")
    one_line(e, "evil.yaml")
    assert untrusted.yaml_load("a: [1, 2]") == {"a": [1, 2]}


def _onnx_model(domain: str = "", external: bool = False) -> bytes:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    if external:
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
        w.external_data.add(key="location", value="../../etc/passwd")
    node = helper.make_node("Mul" if not domain else "Evil", ["x", "w"], ["y"], domain=domain)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [w])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=opsets).SerializeToString()


def test_onnx_custom_ops_and_external_data_are_refused():
    ok = _onnx_model()
    assert untrusted.check_onnx(ok) == ok
    with pytest.raises(UntrustedFileError) as e:
        untrusted.check_onnx(_onnx_model(domain="com.evil"), "b/model.onnx")
    one_line(e, "b/model.onnx", "com.evil")
    with pytest.raises(UntrustedFileError) as e:
        untrusted.check_onnx(_onnx_model(external=True), "b/model.onnx")
    one_line(e, "external data")
    with pytest.raises(ArtifactError) as e:
        untrusted.check_onnx(pickle.dumps([1]), "b/model.onnx")
    one_line(e, "not a valid ONNX model")


def test_onnx_scorer_goes_through_the_gate(tmp_path):
    pytest.importorskip("onnxruntime")
    from dllm2rec.serving.onnx_export import OnnxScorer

    (tmp_path / "m.onnx").write_bytes(_onnx_model(domain="com.evil"))
    with pytest.raises(UntrustedFileError):
        OnnxScorer(tmp_path / "m.onnx", n_items=1)


# Raw loaders that can run code, and where each may appear. Everything else goes through utils/untrusted.py.
RAW = {
    r"(?<!untrusted\.)(?<!def )\bread_pickle\(": "pandas.read_pickle",
    r"\bpickle\.loads?\(": "pickle.load",
    r"\btorch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
    r"allow_pickle=True": "np.load(allow_pickle=True)",
    r"\byaml\.(load|unsafe_load|full_load)\(": "yaml loader other than safe_load",
    r"InferenceSession\(": "onnxruntime session",
    r"register_custom_ops_library": "ONNX custom-op library",
    r"trust_remote_code\s*=\s*True": "transformers remote code",
}
ALLOWED = {
    ("utils/untrusted.py", "pandas.read_pickle"), ("utils/untrusted.py", "pickle.load"),
    ("utils/untrusted.py", "torch.load without weights_only=True"),
    ("serving/onnx_export.py", "onnxruntime session"),  # fed check_onnx(bytes) on the same line
}


def test_no_raw_code_executing_loader_outside_the_gate():
    found = set()
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC).as_posix()
        for line in f.read_text(encoding="utf-8").splitlines():
            code = line.split("#", 1)[0]
            if code.lstrip().startswith(('"', "'")) or "``" in code:
                continue  # docstrings that name the functions
            for pat, what in RAW.items():
                if re.search(pat, code):
                    found.add((rel, what))
    assert found <= ALLOWED, sorted(found - ALLOWED)
    assert ("serving/onnx_export.py", "onnxruntime session") in found  # the scan does see real call sites
    onnx_src = (SRC / "serving" / "onnx_export.py").read_text(encoding="utf-8")
    assert "InferenceSession(check_onnx(" in onnx_src
