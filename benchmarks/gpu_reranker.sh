#!/usr/bin/env bash
# The LLM reranker teacher (llm-rerank) on one GPU, inside a fixed wall-clock budget (default 9 minutes):
#
#   bash benchmarks/gpu_reranker.sh --data DIR [--model SPEC]   # a GPU machine: prepared ML-100K, SmolLM2-135M in bf16
#   bash benchmarks/gpu_reranker.sh --dry-run                   # any CPU: tiny LLaMA, tiny data, a few steps (CI)
#
# Steps: retriever (a plain SASRec, `dllm2rec train`) -> fit (`teacher fit-reranker`, LoRA, thousands of rows) ->
# evaluate on valid and test (`teacher evaluate-reranker`: reranker vs its retriever vs popularity on the same rows,
# paired 95 % CIs, one-user latency) -> artifacts for a budget of training rows (`teacher rerank-artifacts`) ->
# distil (`dllm2rec train` SASRec with the reranker's artifacts) -> summary.json. Every step is a CLI command under
# `timeout`, prints a UTC timestamp and its seconds; a failed step stops the run with a one-line error (exit 2).
# Why: on CPU the reranker trained on 240 rows is not measurably better than its retriever (docs/reranker.md);
# the open question is whether thousands of rows make it so — one GPU answers it in minutes.
# Run it after benchmarks/gpu_teacher.sh in the same session (that script installs what is missing and prepares
# the data; pass its data dir with --data). Output: ${OUT:-runs/gpu_reranker}/{summary.json,run.log,*.json}.
set -euo pipefail

die() { echo "gpu_reranker: error: $*" >&2; exit 2; }

DRY=0; DATA=""; MODEL=smollm2-135m; ROWS=4096; STEPS=400; BATCH=16; EVAL_ROWS=1000; ART_ROWS=8192; M=20
BUDGET_S=520; DEVICE=cuda; DTYPE=bfloat16
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --data) DATA=${2:?}; shift ;;
    --model) MODEL=${2:?}; shift ;;
    --rows) ROWS=${2:?}; shift ;;
    --steps) STEPS=${2:?}; shift ;;
    --batch-size) BATCH=${2:?}; shift ;;
    --eval-rows) EVAL_ROWS=${2:?}; shift ;;
    --artifact-rows) ART_ROWS=${2:?}; shift ;;
    --budget-s) BUDGET_S=${2:?}; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
for v in ROWS STEPS BATCH EVAL_ROWS ART_ROWS BUDGET_S; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') must be a non-negative integer, got '${!v}'"
done

PY=${PYTHON:-python}
OUTDIR=${OUT:-runs/gpu_reranker}
W=$OUTDIR/work
mkdir -p "$W"
LOG=$OUTDIR/run.log
: >"$LOG"
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET_S))
TIMES=$W/times.tsv
: >"$TIMES"
DL=("$PY" -m dllm2rec)

say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
# step NAME MAX_SECONDS OUTFILE CMD...: run under timeout (capped by the run's deadline), stdout to OUTFILE
step() {
  local name=$1 max=$2 out=$3; shift 3
  local left=$((DEADLINE - $(date +%s)))
  [ "$left" -gt 5 ] || die "budget of ${BUDGET_S}s spent before step '$name'"
  [ "$max" -lt "$left" ] || max=$left
  say "$name (<= ${max}s)"
  local s; s=$(date +%s)
  if ! timeout "$max" "$@" >"$out" 2>>"$LOG"; then
    die "step '$name' failed or ran past ${max}s (see $LOG)"
  fi
  printf '%s\t%s\n' "$name" "$(( $(date +%s) - s ))" >>"$TIMES"
}

if [ "$DRY" = 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} CUDA_VISIBLE_DEVICES=""
  DEVICE=cpu; DTYPE=float32; ROWS=8; STEPS=2; BATCH=2; EVAL_ROWS=6; ART_ROWS=8; M=4
  step tiny-setup 120 "$W/tiny.txt" "$PY" - "$W" <<'PYEOF'
import sys
from pathlib import Path
from dllm2rec.teachers.bigrec.tiny import make_tiny_llama, tiny_dataset

w = Path(sys.argv[1])
ds = tiny_dataset()
ds.save(w / "ds")
print(make_tiny_llama(w / "model", extra_texts=list(ds.titles)))
PYEOF
  DATA=$W/ds
  MODEL=$W/model
else
  [ -n "$DATA" ] || die "--data DIR (a prepared dataset, e.g. the one benchmarks/gpu_teacher.sh prepared) is required"
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "no CUDA device visible (use --dry-run on a CPU)"
fi
[ -f "$DATA/manifest.json" ] || die "$DATA: not a prepared dataset (no manifest.json)"
say "gpu_reranker $([ "$DRY" = 1 ] && echo '--dry-run ')data=$DATA model=$MODEL device=$DEVICE dtype=$DTYPE out=$OUTDIR"

EPOCHS=$([ "$DRY" = 1 ] && echo 1 || echo 60)
TRAIN_DEV=$([ "$DRY" = 1 ] && echo cpu || echo cuda)
step retriever 150 "$W/retriever.txt" "${DL[@]}" train --data "$DATA" --run-dir "$W/retriever" \
  -o "train.epochs=$EPOCHS" -o train.patience=10 -o "train.device=$TRAIN_DEV" -o model.dim=64
RET=$W/retriever/best
step fit 300 "$W/fit.json" "${DL[@]}" teacher fit-reranker "$DATA" --retriever "$RET" --out "$W/fit" \
  --model "$MODEL" --m "$M" --steps "$STEPS" --batch-size "$BATCH" --budget-rows "$ROWS" --warmup-steps 1 \
  --device "$DEVICE" --dtype "$DTYPE" --item-emb random --threads 1
for split in valid test; do
  step "evaluate-$split" 120 "$W/evaluate-$split.json" "${DL[@]}" teacher evaluate-reranker "$DATA" \
    --reranker "$W/fit/adapter" --retriever "$RET" --split "$split" --rows "$EVAL_ROWS" --latency 5 \
    --eval-batch "$BATCH" --device "$DEVICE" --dtype "$DTYPE" --json-out "$W/ranks-$split.json"
done
step artifacts 150 "$W/artifacts.json" "${DL[@]}" teacher rerank-artifacts "$DATA" --reranker "$W/fit/adapter" \
  --retriever "$RET" --work "$W/score" --out "$W/artifacts" --budget "$ART_ROWS" --shard-size 256 \
  --eval-batch "$BATCH" --item-emb random --device "$DEVICE" --dtype "$DTYPE"
step distill 150 "$W/distill.txt" "${DL[@]}" train --data "$DATA" --run-dir "$W/distilled" \
  -o "train.epochs=$EPOCHS" -o train.patience=10 -o "train.device=$TRAIN_DEV" -o distill.strategy=dllm2rec \
  -o "distill.teacher=$W/artifacts" -o distill.params.ed_weight=0 -o "distill.params.K=$(( M < 10 ? M : 10 ))"

"$PY" - "$W" "$OUTDIR" "$T0" "$DRY" <<'PYEOF'
import json, sys, time
from pathlib import Path

w, out, t0, dry = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
read = lambda p: json.loads(p.read_text()[p.read_text().index("{"):])  # noqa: E731 (CLI output: JSON after logs)
times = dict(line.split("\t") for line in (w / "times.tsv").read_text().splitlines())
res = {
    "status": "ok", "dry_run": dry, "wall_s": int(time.time()) - t0, "steps": {k: int(v) for k, v in times.items()},
    "fit": {k: v for k, v in read(w / "fit.json").items() if k not in ("first_losses", "last_losses")},
    "losses": {"first": read(w / "fit.json")["first_losses"], "last": read(w / "fit.json")["last_losses"]},
    "valid": read(w / "evaluate-valid.json")["table"], "test": read(w / "evaluate-test.json")["table"],
    "latency_ms": read(w / "evaluate-test.json").get("latency_ms"),
    "artifacts": read(w / "artifacts.json"),
    "retriever_test": json.loads((w / "retriever" / "results.json").read_text())["test"],
    "distilled_test": json.loads((w / "distilled" / "results.json").read_text())["test"],
    "note": "retriever/distilled: full ranking of the whole test split, history not masked (the trainer's "
            "protocol); valid/test tables: the reranker's sampled rows, history masked (full-excl), paired CIs",
}
(out / "summary.json").write_text(json.dumps(res, indent=1))
print(json.dumps({k: res[k] for k in ("status", "dry_run", "wall_s", "steps")}))
PYEOF
say "done in $(( $(date +%s) - T0 ))s: $OUTDIR/summary.json"
