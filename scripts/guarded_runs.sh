#!/usr/bin/env bash
# README table (b), guarded rows: `dllm2rec distill auto` (pre-flight + validation-only search over lam, ed_weight,
# K, trial 0 = plain) on one dataset, then the chosen setting with seeds 1 and 2 (seed 0 is the chosen trial
# itself), then a report over the three. Resumable: finished runs are reused.
#   bash scripts/guarded_runs.sh lastfm|ml100k [TRIALS]
set -euo pipefail
DS=${1:?lastfm or ml100k}; TRIALS=${2:-6}
CFG=configs/dllm2rec-sasrec-$DS.yaml; OUT=runs/guard/$DS
COMMON=(-o train.num_threads=1 -o train.seed=0 -o train.epochs=200 -o train.patience=10)
dllm2rec distill auto -c "$CFG" "${COMMON[@]}" --trials "$TRIALS" --out "$OUT"
mapfile -t CHOSEN < <(python - "$OUT/guard.json" <<'PY'
import json, sys
from dllm2rec.workflows.guard import _trial_overrides
g = json.load(open(sys.argv[1]))
for o in _trial_overrides(g["chosen"]):
    print(o)
PY
)
mkdir -p "$OUT/seeds"
ln -sfn "$(realpath "$(python -c "import json;print(json.load(open('$OUT/guard.json'))['chosen_run_dir'])")")" "$OUT/seeds/s0"
for s in 1 2; do
  [ -f "$OUT/seeds/s$s/results.json" ] && continue
  OV=(); for o in "${CHOSEN[@]}"; do OV+=(-o "$o"); done
  dllm2rec train -c "$CFG" "${COMMON[@]}" "${OV[@]}" -o train.seed=$s -o out_dir="$OUT/seeds" -o name=s$s --resume
done
dllm2rec report "$OUT/seeds/s0" "$OUT/seeds/s1" "$OUT/seeds/s2" --out "$OUT/report" --no-plots
