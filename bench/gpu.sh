#!/usr/bin/env bash
# The GPU benchmarks still to be measured, one after another, each bounded in time, each
# output kept in OUT/<name>.txt with its command on the first line (for RESULTS.md).
#
#   bench/gpu.sh DATA OUT [PYTHON]     # DATA: MSRA in the BERT-NER layout
#
# 1. fused: the same 8 trials solo and fused 8 at a time (bert-base shape, MSRA, bf16, 32
#    sentences a step per member): aggregate tokens/s, start-up seconds, the F1 check.
# 2. throughput: the trainer's fast path against the HF Trainer on a bert-base config and MSRA,
#    with MFU and the F1 check without dropout (speed must not change the maths).
# 3. scaling: aggregate tokens/s of 1, 2 and 4 concurrent trials on one GPU.
# 4. vs-hf: the CoNLL-2003 MiniLM head to head, fused 10 (MINILM: a folder from
#    bench/pack_minilm.py; CONLL: CoNLL-2003 in the BERT-NER layout), when both are given.
set -u
data=${1:?usage: bench/gpu.sh DATA OUT [PYTHON]}
out=${2:?usage: bench/gpu.sh DATA OUT [PYTHON]}
py=${3:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

run() {
  local name=$1 limit=$2
  shift 2
  echo "== $py $* (limit ${limit}s, $(date -u +%FT%TZ))" | tee "$out/$name.txt"
  timeout "$limit" "$py" "$@" 2>&1 | tee -a "$out/$name.txt"
}

run fused "${FUSED_LIMIT:-300}" bench/fused.py --device cuda --study studies/msra-bert.yaml \
  --scratch-base --data "$data" --batch-size 32 --max-steps 150 --max-epochs 1 --val-limit 200 \
  --trials 8 --ks 1,8 --no-procs
run throughput "${THROUGHPUT_LIMIT:-480}" bench/throughput.py --device cuda --data "$data"
run scaling "${SCALING_LIMIT:-300}" bench/scaling.py --device cuda --scratch-base \
  --fast-path off --data "$data" --concurrent 1,2,4 --max-steps 300
if [ -n "${MINILM:-}" ] && [ -n "${CONLL:-}" ]; then
  run vs-hf-fused "${VS_HF_LIMIT:-300}" bench/vs_hf_search.py --device cuda --fuse 10 \
    --model "$MINILM" --data "$CONLL"
fi
