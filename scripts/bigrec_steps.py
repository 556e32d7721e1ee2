"""BIGRec step by step on the same test rows: each teacher variant vs popularity, plain SASRec and llm-emb.

Reads ``dllm2rec teacher evaluate --json-out`` results (one per variant, all on the rows of one generation plan)
and adds, on exactly those rows, plain SASRec (a finished run's best checkpoint, official unmasked protocol) and
the llm-emb teacher (a saved model, its own protocol: history masked).

    python scripts/bigrec_steps.py --dataset prepared/ml-100k --gen runs/teacher/ml100k-smol/gen-test-c20 \
        --variant "free beam 4, LLM last-token grounding=runs/teacher/ml100k-smol/eval-test-free4-llm.json" ... \
        --sasrec-run runs/table-a/ml-100k/sasrec/none/s0 --llmemb-model /tmp/llmemb/models/ml-100k
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--gen", required=True, type=Path, help="a generation dir whose plan.json fixes the rows")
    ap.add_argument("--variant", action="append", default=[], help="'label=eval.json' (repeatable)")
    ap.add_argument("--sasrec-run", default=None)
    ap.add_argument("--llmemb-model", default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    import torch

    from dllm2rec.data.schema import SeqDataset
    from dllm2rec.evaluation.metrics import metrics_from_ranks
    from dllm2rec.evaluation.protocol import rank_targets
    from dllm2rec.teachers.bigrec.evaluate import popularity_ranks

    torch.set_num_threads(a.threads)
    ds = SeqDataset.load(a.dataset)
    plan = json.loads((a.gen / "plan.json").read_text(encoding="utf-8"))
    split, pos = plan["split"], np.asarray(plan["positions"], dtype=np.int64)

    def fmt(m: dict, key: str = "full") -> tuple[float, float]:
        return m[f"{key}/HR@20"], m[f"{key}/NDCG@20"]

    rows = []
    pop = metrics_from_ranks(popularity_ranks(ds, split, pos), ks=(20,))
    rows.append(("popularity (train targets)", "full", *fmt(pop)))
    for v in a.variant:
        label, path = v.rsplit("=", 1)
        res = json.loads(Path(path).read_text(encoding="utf-8"))
        if res["rows"] != len(pos):
            raise SystemExit(f"{path}: {res['rows']} rows, the plan has {len(pos)}")
        rows.append((f"BIGRec: {label} (titles real: {res['catalogue_title_rate']:.0%})", "full",
                     *fmt(res["teacher"])))
    if a.sasrec_run:
        from dllm2rec.students.checkpoint import load_student

        model, _ = load_student(Path(a.sasrec_run) / "best")
        r = rank_targets(model, ds[split], batch=1024, rows=pos).numpy()
        rows.append(("plain SASRec (seed 0)", "full", *fmt(metrics_from_ranks(r, ks=(20,)))))
    if a.llmemb_model:
        from dllm2rec.teachers.llmemb import LLMEmbTeacher, _eval_ranks

        t = LLMEmbTeacher.load_model(a.llmemb_model, ds)
        r = _eval_ranks(t.model, ds[split], t.mask, 1024)[pos]
        rows.append((f"llm-emb teacher ({Path(a.llmemb_model).name})", t.protocol,
                     *fmt(metrics_from_ranks(r, ks=(20,)))))
    print(f"{ds.name}, {len(pos)} {split} rows of {a.gen} (seeded random selection)")
    print("| model | protocol | HR@20 | NDCG@20 | × popularity HR@20 |")
    print("|---|---|---:|---:|---:|")
    for label, proto, hr, nd in rows:
        ratio = hr / rows[0][2] if rows[0][2] else float("nan")
        print(f"| {label} | {proto} | {hr:.3f} | {nd:.4f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
