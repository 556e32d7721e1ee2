"""The package's shape, checked (issue 13): one-way layers, every module importable with the base install, no
source file over 500 lines.

Layer order (a module may import its own layer or lower ones, never higher):
    utils, errors, registry  <  config, data  <  evaluation core (metrics, protocol, stats, baselines)
    <  teachers  <  students, losses  <  distill  <  training | serving  <  top
top = cli modules, workflows/, experiments, api, and the report/plot/analysis modules of evaluation/.
training and serving never import each other.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "dllm2rec"
TOP = 99
LAYERS = {"utils": 0, "errors": 0, "registry": 0, "config": 1, "data": 1, "evaluation": 2, "teachers": 3,
          "students": 4, "losses": 4, "distill": 5, "training": 6, "serving": 6}
EVALUATION_TOP = {"report", "plots", "analysis", "runs", "teacher_metrics"}
TOP_PACKAGES = {"cli", "workflows", "experiments", "api", "__main__"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(mod: str) -> int:
    parts = mod.split(".")
    if len(parts) == 1:
        return 0                                  # the root package: __version__ and lazy names only
    if parts[1] in TOP_PACKAGES or parts[-1] == "cli" or parts[-1].startswith("cli_"):
        return TOP
    if parts[1] == "evaluation" and len(parts) > 2 and parts[2] in EVALUATION_TOP:
        return TOP
    return LAYERS.get(parts[1], TOP)


def first_party_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dllm2rec":
            if node.module == "dllm2rec":          # from dllm2rec import losses -> dllm2rec.losses
                out.update(f"dllm2rec.{a.name}" for a in node.names if a.name != "__version__")
                if any(a.name == "__version__" for a in node.names):
                    out.add("dllm2rec")
            else:                                  # from dllm2rec.utils import io -> dllm2rec.utils.io as well
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "dllm2rec")
    return out


def violations() -> list[str]:
    bad = []
    for f in sorted(SRC.rglob("*.py")):
        mod = _module(f)
        for dep in sorted(first_party_imports(f)):
            side = {mod.split(".")[1] if "." in mod else "", dep.split(".")[1] if "." in dep else ""}
            if layer(dep) > layer(mod) or (side == {"training", "serving"}):
                bad.append(f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})")
    return bad


def test_layers_import_one_way():
    assert violations() == []


def test_layer_check_can_fail(tmp_path, monkeypatch):
    """The check sees imports inside functions too (a backwards import hidden in a function is still one)."""
    fake = SRC / "students" / "_layer_probe.py"
    fake.write_text("def f():\n    from dllm2rec.training.trainer import Trainer\n    return Trainer\n")
    try:
        assert any("_layer_probe" in v for v in violations())
    finally:
        fake.unlink()


def test_every_module_imports_with_the_base_install():
    """Optional extras blocked: every module still imports, except the one whose purpose is an extra."""
    code = textwrap.dedent('''
        import importlib, importlib.abc, pkgutil, sys
        EXTRAS = {"fastapi", "starlette", "uvicorn", "httpx", "transformers", "peft", "accelerate", "gguf",
                  "tokenizers", "sentencepiece", "onnx", "onnxruntime", "optuna", "faiss", "vllm", "ray"}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in EXTRAS:
                    raise ImportError(f"No module named {name!r} (blocked: optional extra)")
        sys.meta_path.insert(0, Block())
        import dllm2rec
        for m in pkgutil.walk_packages(dllm2rec.__path__, "dllm2rec."):
            if m.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(m.name)
            except ImportError as e:
                print("FAIL", m.name, e)
    ''')
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    failed = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    # serving/app.py is the FastAPI service itself (the `serve` extra); everything else must import
    assert [f.split()[1] for f in failed] == ["dllm2rec.serving.app"], r.stdout
    assert "fastapi" in failed[0]


def test_no_source_file_over_500_lines():
    long = {str(f.relative_to(SRC)): n for f in SRC.rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}


def test_no_import_cycles_between_modules():
    """Strongly connected components of the module graph (a package's __init__ re-exporting is not a cycle)."""
    mods = {_module(f): f for f in SRC.rglob("*.py")}

    def owner(dep: str) -> str:
        while dep not in mods and "." in dep:
            dep = dep.rsplit(".", 1)[0]
        return dep

    graph = {m: {owner(d) for d in first_party_imports(f)} - {m} for m, f in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:                       # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            pkg_init = len(comp) == 2 and any(c == min(comp, key=len) and max(comp, key=len).startswith(c + ".")
                                              for c in comp)
            if len(comp) > 1 and not pkg_init:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []
