"""Serving benchmark: ``python benchmarks/bench_serving.py [BUNDLE] [options]`` == ``dllm2rec bench``.

Student latency p50/p99 (batch 1) and throughput (batch 256) for eager torch, TorchScript and ONNX Runtime
against the bare matmul+topk floor over the same item matrix; optional teacher timing (``--teacher-model``);
a bounded loopback HTTP load test (10,000 requests, 8 concurrent clients). Synthetic 17,000-item catalogue by
default. See ``dllm2rec bench --help`` and docs/serving.md.
"""
import sys

from dllm2rec.cli import main as cli_main


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/bench_serving.py`` == ``dllm2rec bench`` (same options)."""
    cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
