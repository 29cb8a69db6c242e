#!/usr/bin/env bash
# The GPU runs behind benchmarks/RESULTS.md, on the lent H100 (device tool), from the repo root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_g .wheelhouse/*.whl \
#     && export PYTHONPATH=/tmp/site_g:$PWD; bash benchmarks/gpu_run.sh bench6b|more6b|issue3
# bench6b: build the random 6.24B GLM, train_bench.py (tasktune vs PEFT reference, caps, profiles), eval_bench.py.
# issue3:  a ~1B random GLM trained by `tasktune train` in 4-bit, reloaded by `tasktune eval`; then the tests.
# compile6b: issue #6's step, eager vs torch.compile vs compile + CUDA graphs (tuning/training/compiling.py), with profiles
#            (one call, ~9 min); tests: pytest tests/tuning tests/gpu (not slow) on the GPU machine.
# sweep:   issue #3's tiny bases x P-tuning settings (benchmarks/tiny_sweep.py; CASES=benchmarks/sweeps/basesN.json).
# ddp2:    on 2 GPUs (nvidia-h200-x2): the ~1B random GLM in 4-bit, 1 GPU vs torchrun on 2 at equal global batch and at
#          twice the batch, then `tasktune eval` of the 2-GPU adapter (benchmarks/ddp_table.py prints the table).
# auto23:  issue 23 (one call, ~6 min; carry [".wheelhouse", "data"]): `tasktune train --compile cudagraphs` on the 6B GLM
#          three times with one compile cache (cold, warm from the entry alone, warm with inductor's local cache too;
#          the warm runs are `--compile auto`, 12 and 4 steps: graphs only because the cache is warm), their peaks; then train_bench --checkpointing auto,auto:5.5,full eager
#          against the PEFT recipe at 4 x 64/64 and 4 x 256/256.
# warm23:  issue 23: cold, warm (entry only) and warm (entry + local inductor cache) 3-step runs with dynamo's
#          compile_times() printed at exit: where the warm first step goes.
# warm23l: issue 23's regional compile (tuning/training/regional.py): per scope in ${W23L_SCOPES:-layers model}
#          (TASKTUNE_COMPILE_SCOPE), a cold (cudagraphs) and a warm (auto, entry only, fresh inductor folder) 6-step
#          run; prints first_step_s, the later steps, graph/cache counters and compile_times() ($OUT/warm23l.log, ~7 min).
# serve6b: issue 20 (~9 min; carry [".wheelhouse", "data"]): a random 6B GLM trained 2 steps in NF4, copied to 4 runs;
#          benchmarks/serve_agreement.py (engine vs eval greedy answers, $OUT/serve6b_agree.log/.json, <= T_AGREE=120 s),
#          then serve_bench.py over HTTP (<= T_SERVE=300 s; PROFILE=1 adds serve_profile.py first).
# nf4dec:  issue 20 (~3 min; carry [".wheelhouse"]): benchmarks/nf4_decode_bench.py: bitsandbytes, bf16 weights
#          dequantised once, the Triton decode kernels of benchmarks/nf4_triton.py (V1=1 adds v1), $OUT/nf4dec.md/json.
# dq20:    issue 20 (~9 min; carry [".wheelhouse", "data"]): the serve6b runs served with --decode-weights bf16:
#          serve_agreement.py ($OUT/dq20_agree.log/json; T_AGREE=1 skips it), with PROFILE=1 serve_profile.py at
#          PROF_ROWS (the engine alone: step, admissions, kernels; $OUT/dq20_prof.*), and serve_bench.py ($OUT/dq20.log).
# gap22:   issue 22 (~6 min; carry [".wh2", "data", "runs"]): the demo's recipe P-tuned on the GPU (fp32, eager) and
#          evaluated there; the CPU-trained runs/cpu-grid-tiny evaluated on the GPU too; the GPU run comes back.
# gil20:   issue 20 (~6 min; carry [".wheelhouse", "data"]): serve_bench (bf16 weights, STREAMS, RPS) once per GIL switch
#          interval in SWI (TASKTUNE_SWITCH_INTERVAL; serve/cli.py), $OUT/gil20.log.
# ep20:    issue 20 (~6 min; carry [".wheelhouse", "data"]): serve_bench (bf16 weights, STREAMS, RPS) once per
#          --engine-process choice in ENGINES (default "on off": the engine in its own process, then a thread),
#          $OUT/ep20.log.
# fz20:    issue 20 (~7 min; carry [".wheelhouse", "data"]): the serve6b runs, bf16 decode weights: serve_profile.py at
#          rows 1 and 32 with eager and with compiled decoder layers (--fuse off/on: start time, step, kernels;
#          $OUT/fz20_prof_*; FZ_PROFILE="" skips), the GPU serve tests (FZ_TESTS=1), then serve_bench per
#          --decode-compile in FZ_COMPILE and --max-queue-delay (ms) in FZ_DELAYS (default 0), $OUT/fz20.log.
# dq23:    issue 23 (~5 min; carry [".wheelhouse", "data"]): train_bench with the 4-bit linears dequantised to bf16 once
#          (--dequantize), CUDA graphs, no checkpointing, at 4 x 64/64, 16 x 64/64 and 4 x 256/256, beside the PEFT
#          recipe on the packed NF4 weights in the same process ($OUT/dq23.log, dq23.json).
# pf20:    issue 20 (~8 min): GPU serve tests, then the serve6b runs' profile (compiled layers), greedy agreement
#          (bf16 weights) and 32 streams twice, with the prefill in the slots' layout
# mem23:   issue 23 (~5 min): benchmarks/mem_peak.py on the tw23 run, eager and graphs: what is live at the bf16 peak
# tw23:    issue 23 (~9 min; carry [".wheelhouse", "data"]): `tasktune train` with its defaults (--train-weights auto)
#          on the 6B GLM at 4 x 64/64: a short cold run (eager) over bf16 and over 4-bit, cold graphs, the same run warm
#          under --compile auto, auto under --max-memory 5.5; first step, median later step, peaks; the recipe after.
#          lite_bf16 / lite_4bit: CUDA graphs of the eager kernels (--compile eager-graphs, no inductor); since
#          2026-12-08 `auto` picks them in a short cold run, so eager_auto measures them too.
# g256:    issue 23's "4 x 256/256 in every mode" (~7 min): train_bench with CUDA graphs (regional compile) at
#          4 x 256/256 and 4 x 64/64, checkpointing none and full, beside the PEFT recipe ($OUT/g256.log, g256.json).
# nf4:     issue 23's NF4 dequantisation (~3 min): benchmarks/nf4_bench.py, per 6B linear shape at M = 544 and 2176, bnb's
#          matmul_4bit vs its split, a torch.compile'd dequant, the Triton fused dequant-GEMM, bnb's forced cgemm_4bit and
#          the bf16 floor ($OUT/nf4.md, nf4.json); then, when .wheelhouse/optional/torchao-*.whl is carried, torchao's
#          NF4Tensor at M = 544 in its own time-boxed process ($OUT/nf4_torchao.md).
# Logs and JSON go to $OUT (the device tool brings them back). The wheelhouse (.wheelhouse/*.whl, cp312) needs, beside
# bitsandbytes, datasets, jsonschema and the serve extra: opentelemetry-api, annotated-doc, pydantic, pydantic-core and
# annotated-types (fastapi 0.165 imports them; the H100 image lacks pydantic).
# The device tool carries 64 MiB in all: `python benchmarks/slim_wheel.py .wheelhouse/bitsandbytes-*.whl` keeps only the
# CUDA 13 libraries the image's torch (2.11.0+cu130) loads (41 -> 7 MiB; the full wheel left no room for uvloop).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
phase=${1:?bench6b or issue3}
# progress bars and weight loading, filtered out of the logs
BARS='it/s\]|s/it\]|step/s\]|s/step\]|Loading weights'
# `python3 -c "$PEAKS" train ...`: `tasktune train` with the CUDA peaks printed at exit (allocated / reserved, GiB)
# (SDP_NO_CUDNN=1: sdpa's cuDNN backend off, so attention takes flash/efficient kernels, which build no plan per shape)
PEAKS='import atexit, os, runpy, sys, torch
if os.environ.get("SDP_NO_CUDNN"): torch.backends.cuda.enable_cudnn_sdp(False)
atexit.register(lambda: print("peak_gib", round(torch.cuda.max_memory_allocated() / 2**30, 3),
                              round(torch.cuda.max_memory_reserved() / 2**30, 3), flush=True))
sys.argv = ["tasktune"] + sys.argv[1:]; runpy.run_module("tasktune", run_name="__main__")'
# the 6B GLM's `tasktune train` runs of issue 23 (auto23, tw23): 4-bit, batch 4, a log line every step
TRAIN6B="--model /tmp/glm6b --data data/grid --quantization-bit 4 --per-device-train-batch-size 4
         --gradient-accumulation-steps 1 --logging-steps 1 --save-steps 1000 --resume never"
# jieba (the metrics' word cutter) has no wheel: .wheelhouse/extra/pysite.tar.xz holds it, unpacked onto the path
use_pysite() {
  [ -f .wheelhouse/extra/pysite.tar.xz ] && mkdir -p /tmp/pysite && tar -C /tmp/pysite -xJf .wheelhouse/extra/pysite.tar.xz \
    && export PYTHONPATH=${PYTHONPATH:-}:/tmp/pysite
}
[[ "$phase" =~ ^(caps6b|eval6b|evalcache|compile6b_b|tests)$ ]] || nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
[[ "$phase" =~ ^(caps6b|eval6b|evalcache|compile6b_b|tests)$ ]] || python3 -c "import torch, transformers, peft, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', b.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pip freeze > "$OUT/freeze.txt" 2>/dev/null  # the tested set, for locks/gpu.txt

if [ "$phase" = bench6b ]; then
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b 2>&1 | grep -v 'Writing model' | tee "$OUT/build6b.log"
  python3 benchmarks/train_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/train6b.json" \
    --profile-dir "$OUT/prof" 2>&1 | tee "$OUT/train6b.log"
  python3 benchmarks/eval_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/eval6b.json" 2>&1 | tee "$OUT/eval6b.log"
fi

if [ "$phase" = issue3 ]; then
  use_pysite
  python3 benchmarks/benchmodel.py --size 1b --out /tmp/glm1b --text-from data/grid 2>&1 | grep -v 'Writing model' | tee "$OUT/issue3.log"
  python3 benchmarks/issue3_gpu.py --model /tmp/glm1b --data data/grid --run /tmp/run1b --out "$OUT/issue3.json" 2>&1 \
    | grep -v -E 'it/s\]|s/it\]' | tee -a "$OUT/issue3.log"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu tests/benchmarks -m "gpu or not gpu" 2>&1 | tail -30 \
    | tee "$OUT/pytest.log"
  bash "$0" evalcache
  timeout 170 python3 -m pytest -q -p no:cacheprovider -x tests/tuning -m "not slow" 2>&1 | tail -40 | tee -a "$OUT/pytest.log"
fi

if [ "$phase" = evalcache ]; then  # generate_batched's static cache (its CUDA default) against the dynamic one
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b 2>&1 | grep -v 'Writing model'
  timeout 150 python3 benchmarks/eval_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/eval6b_caches.json" \
    --batch-sizes 32,16 --caches static,dynamic 2>&1 | grep -v 'Loading weights' | tee "$OUT/eval6b_caches.log"
fi

if [ "$phase" = more6b ]; then  # second 6B run: re-measure 64/64 (10 timed steps), the 8 GiB cap, eval variants
  bash "$0" caps6b; bash "$0" eval6b
fi

if [ "$phase" = caps6b ]; then  # re-measure batch 4 and 16 at 64/64 and the 8 GiB cap (10 timed steps)
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b 2>&1 | grep -v 'Writing model'
  timeout 200 python3 benchmarks/train_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/caps6b.json" \
    --cases 4x64x64,16x64x64 --checkpointing full,every2 --caps 8 --steps 10 2>&1 | grep -v 'Loading weights' | tee "$OUT/caps6b.log"
fi

if [ "$phase" = eval6b ]; then  # batched vs loop again, plus a static KV cache variant and a profile
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b 2>&1 | grep -v 'Writing model'
  timeout 120 python3 benchmarks/eval_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/eval6b_2.json" \
    --batch-sizes 32 --profile "$OUT/eval6b_profile.txt" 2>&1 | grep -v 'Loading weights' | tee "$OUT/eval6b_2.log"
  timeout 240 python3 benchmarks/eval_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/eval6b_static.json" \
    --batch-sizes 32 --static 2>&1 | grep -v 'Loading weights' | tee "$OUT/eval6b_static.log"
fi

if [ "$phase" = compile6b ]; then  # eager (reference, tasktune) and compiled tasktune at 4 x 64/64, one process each
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b 2>&1 | grep -v 'Writing model'
  export TORCH_LOGS=${TORCH_LOGS:-graph_breaks,recompiles,perf_hints}  # perf_hints: why CUDA graphs were skipped
  timeout ${T_EAGER:-300} python3 benchmarks/train_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/compile6b_a.json" \
    --methods tasktune,reference --cases 4x64x64 --checkpointing full,none --compile ${C_A:-off,on} --caps "" \
    --steps 10 --warmup 3 --profile-dir /tmp/prof 2>&1 | grep -v 'Loading weights' | tee "$OUT/compile6b_a.log"
  bash "$0" compile6b_b
  tar -C /tmp -czf "$OUT/prof.tgz" prof
fi

if [ "$phase" = compile6b_b ]; then  # compile + CUDA graphs (mode="reduce-overhead")
  timeout ${T_GRAPHS:-240} python3 benchmarks/train_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/compile6b_b.json" \
    --methods tasktune --cases 4x64x64 --checkpointing ${CK_B:-full,none} --compile cudagraphs --caps "" \
    --steps 10 --warmup 3 --profile-dir /tmp/prof 2>&1 | grep -v 'Loading weights' | tee "$OUT/compile6b_b.log"
fi

if [ "$phase" = e2e_graphs ]; then  # `tasktune train --compile cudagraphs` end to end (1B, 4-bit): eager vs graphs, then resume
  python3 benchmarks/benchmodel.py --size 1b --out /tmp/glm1b --text-from data/grid 2>&1 | grep -v 'Writing model'
  common="--model /tmp/glm1b --data data/grid --quantization-bit 4 --per-device-train-batch-size 4
          --gradient-accumulation-steps 4 --save-steps 20 --logging-steps 5 --seed 42"
  for mode in off cudagraphs; do
    t=$SECONDS; python3 -m tasktune train $common --out /tmp/e2e_$mode --max-steps 40 \
      --resume never --compile $mode 2>&1 | grep -v -E "$BARS" | tail -8
    echo "$mode: $((SECONDS - t)) s wall"
  done
  t=$SECONDS; python3 -m tasktune train $common --out /tmp/e2e_cudagraphs --max-steps 60 \
    --compile cudagraphs 2>&1 | grep -v -E "$BARS" | tail -6
  echo "resume to 60: $((SECONDS - t)) s wall"
  python3 benchmarks/e2e_losses.py /tmp/e2e_off /tmp/e2e_cudagraphs | tee "$OUT/e2e_graphs.txt"
fi

if [ "$phase" = tests ]; then  # the tuning and GPU tests on the GPU machine (the image's transformers)
  use_pysite
  timeout ${T_TESTS:-540} python3 -m pytest -q -p no:cacheprovider -m "not slow" tests/tuning tests/gpu 2>&1 \
    | grep -v -E 'it/s\]|s/it\]' | tee "$OUT/pytest.log" | tail -60
fi

if [ "$phase" = sweep ]; then  # issue #3: tiny bases x P-tuning settings on the GPU (benchmarks/tiny_sweep.py)
  timeout ${T_SWEEP:-560} python3 benchmarks/tiny_sweep.py --cases "${CASES:-benchmarks/sweeps/bases1.json}" \
    --device cuda --workers ${WORKERS:-8} --threads 2 --out "$OUT/sweep" ${ONLY:+--only $ONLY} 2>&1 \
    | grep -v -E 'it/s\]|s/it\]|Loading weights|Writing model' | tee "$OUT/sweep.log"
  for m in "$OUT"/sweep/*/model; do  # kept bases come back as sweep/NAME.tgz (the device tool skips deep folders)
    d=$(dirname "$m"); [ -e "$d/KEEP" ] && tar -C "$d" -czf "$d.tgz" model; rm -rf "$m"
  done
fi

if [ "$phase" = ddp2 ]; then  # multi-GPU: real NCCL data-parallel runs of `tasktune train`
  use_pysite
  python3 benchmarks/benchmodel.py --size 1b --out /tmp/glm1b --text-from data/grid 2>&1 | grep -v 'Writing model' | tee "$OUT/ddp2.log"
  nvidia-smi --query-gpu=timestamp,index,memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/ddp2_mem.csv" &
  smi=$!
  common="--model /tmp/glm1b --data data/grid --quantization-bit 4 --max-steps ${DDP_STEPS:-40} --gradient-accumulation-steps 2
    --group-by-length step --logging-steps 1 --save-steps 20 --resume never --seed 3"
  windows=""
  run() {  # run NAME CMD...: one training (at most 150 s), its wall-clock window recorded for the memory table
    local name=$1; shift; local t0 rc; t0=$(date +%s.%N)
    timeout 150 "$@" --out "/tmp/ddp/$name" > "/tmp/ddp_$name.log" 2>&1; rc=$?
    { [ $rc = 0 ] || grep -m 12 -E '(Error|error):' "/tmp/ddp_$name.log"  # the ranks' errors first
      grep -v -E 'it/s\]|s/it\]|step/s\]|Loading weights' "/tmp/ddp_$name.log" | tail -n 4; } \
      | sed "s/^/[$name rc=$rc] /" | tee -a "$OUT/ddp2.log"
    windows="$windows${windows:+,}$t0-$(date +%s.%N)"
  }
  mkdir -p /tmp/ddp
  run gpu1_b8 env CUDA_VISIBLE_DEVICES=0 python3 -m tasktune train $common --per-device-train-batch-size 8
  run gpu2_b4 python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m tasktune train $common --per-device-train-batch-size 4
  run gpu2_b8 python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m tasktune train $common --per-device-train-batch-size 8
  kill $smi
  python3 benchmarks/ddp_table.py /tmp/ddp/gpu1_b8="1 GPU" /tmp/ddp/gpu2_b4="2 GPUs, equal global batch" \
    /tmp/ddp/gpu2_b8="2 GPUs, twice the batch" --memory "$OUT/ddp2_mem.csv" --windows "$windows" | tee "$OUT/ddp2_table.md"
  for r in gpu1_b8 gpu2_b4 gpu2_b8; do cp "/tmp/ddp/$r/train_history.json" "$OUT/ddp2_$r.history.json" 2>/dev/null; done
  ls /tmp/ddp/gpu2_b4 | tee -a "$OUT/ddp2.log"
  CUDA_VISIBLE_DEVICES=0 timeout 90 python3 -m tasktune eval /tmp/ddp/gpu2_b4 --limit 16 2>&1 | grep -v -E 'prompt/s\]|Loading weights' \
    | tail -8 | tee -a "$OUT/ddp2.log"
fi

serve_runs() {  # a random ChatGLM3-6B-shaped GLM, one 2-step NF4 run of it (P = 128), copied to 4 run names
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b --text-from data/grid 2>&1 | grep -v 'Writing model'
  timeout 240 python3 -m tasktune train --model /tmp/glm6b --data data/grid --out /tmp/serve/grid --quantization-bit 4 \
    --max-steps 2 --save-steps 2 --per-device-train-batch-size 4 --gradient-accumulation-steps 1 --resume never 2>&1 \
    | grep -v -E 'it/s\]|s/it\]|step/s' | tail -5 | tee "$OUT/serve6b_train.log"
  for k in 1 2 3; do cp -r /tmp/serve/grid /tmp/serve/grid$k; done
}

if [ "$phase" = nf4dec ]; then  # issue 20: the 4-bit linears at decode sizes (benchmarks/nf4_decode_bench.py)
  timeout ${T_DEC:-300} python3 benchmarks/nf4_decode_bench.py ${V1:+--v1} --out "$OUT/nf4dec.json" 2>&1 \
    | tee "$OUT/nf4dec.md"
fi

if [ "$phase" = dq20 ]; then  # issue 20: tasktune serve --decode-weights bf16 on the serve6b runs (data/grid carried)
  serve_runs
  timeout ${T_AGREE:-150} python3 benchmarks/serve_agreement.py /tmp/serve/grid /tmp/serve/grid1 --limit 64 --ignore-eos \
    --max-batch-size 32 --decode-weights bf16 --out "$OUT/dq20_agree.json" 2>&1 | grep -v "Loading weights" \
    | tee "$OUT/dq20_agree.log"
  if [ -n "${PROFILE:-}" ]; then  # the engine alone: step times, admissions (prefill + placement), busiest kernels
    timeout ${T_PROF:-150} python3 benchmarks/serve_profile.py /tmp/serve/grid --rows ${PROF_ROWS:-32} --decode slots \
      --tokens 64 --decode-weights bf16 --out "$OUT/dq20_prof.txt" 2>&1 | grep -v 'Loading weights' | tee "$OUT/dq20_prof.log"
  fi
  timeout ${T_SERVE:-300} python3 benchmarks/serve_bench.py /tmp/serve/grid /tmp/serve/grid1 /tmp/serve/grid2 \
    /tmp/serve/grid3 --streams ${STREAMS:-1,8,32,64} --max-tokens 64 --serial-requests 4 \
    --requests-per-stream ${RPS:-2} --max-batch-size 64 --decode-weights bf16 2>&1 | grep -v "Loading weights" \
    | tee "$OUT/dq20.log"
fi

if [ "$phase" = gil20 ]; then  # issue 20: serve_bench over bf16 weights at each GIL switch interval in ${SWI}
  serve_runs
  for swi in ${SWI:-0.005 0.0005}; do
    echo "== TASKTUNE_SWITCH_INTERVAL=$swi" | tee -a "$OUT/gil20.log"
    TASKTUNE_SWITCH_INTERVAL=$swi timeout ${T_SERVE:-200} python3 benchmarks/serve_bench.py /tmp/serve/grid \
      /tmp/serve/grid1 /tmp/serve/grid2 /tmp/serve/grid3 --streams ${STREAMS:-32,64} --max-tokens 64 \
      --serial-requests 4 --requests-per-stream ${RPS:-2} --max-batch-size 64 --decode-weights bf16 2>&1 \
      | grep -v "Loading weights" | tee -a "$OUT/gil20.log"
  done
fi

if [ "$phase" = fz20 ]; then  # issue 20: the decode step with compiled (fused) decoder layers
  [ -d /tmp/serve/grid3 ] || serve_runs
  for fuse in ${FZ_PROFILE-off on}; do
    timeout ${T_PROF:-200} python3 benchmarks/serve_profile.py /tmp/serve/grid --rows ${PROF_ROWS:-1,32} --decode slots \
      --tokens 64 --decode-weights bf16 --fuse $fuse --out "$OUT/fz20_prof_$fuse.txt" 2>&1 \
      | grep -v -E "$BARS" | tee "$OUT/fz20_prof_$fuse.log"
  done
  if [ -n "${FZ_TESTS:-}" ]; then
    timeout 300 python3 -m pytest -q -o addopts="" -m gpu tests/serve/test_engine.py 2>&1 | tail -15 \
      | tee "$OUT/fz20_pytest.log"
  fi
  for c in ${FZ_COMPILE:-}; do
    for d in ${FZ_DELAYS:-0}; do
      echo "== --decode-compile $c --max-queue-delay $d" | tee -a "$OUT/fz20.log"
      timeout ${T_SERVE:-200} python3 benchmarks/serve_bench.py /tmp/serve/grid /tmp/serve/grid1 /tmp/serve/grid2 \
        /tmp/serve/grid3 --streams ${STREAMS:-32,32} --max-tokens 64 --serial-requests 4 \
        --requests-per-stream ${RPS:-2} --max-batch-size 64 --decode-weights bf16 --decode-compile $c \
        --max-queue-delay $d 2>&1 | grep -v -E "$BARS" | tee -a "$OUT/fz20.log"
    done
  done
fi

if [ "$phase" = pf20 ]; then  # issue 20: prefills in the slots' layout (compiled with the layers); answers, then speed
  # the whole log comes back (a summary alone said which tests failed, not why: 2026-12-07); the tail is printed
  timeout ${T_TEST:-200} python3 -m pytest -q -o addopts="" -m gpu tests/serve/test_engine.py > "$OUT/pf20_pytest.log" 2>&1
  tail -4 "$OUT/pf20_pytest.log"
  [ -d /tmp/serve/grid3 ] || serve_runs
  timeout ${T_PROF:-150} python3 benchmarks/serve_profile.py /tmp/serve/grid --rows ${PROF_ROWS:-1,32} --decode slots \
    --tokens 64 --decode-weights bf16 --fuse on --out "$OUT/pf20_prof.txt" 2>&1 | grep -v -E "$BARS" \
    | tee "$OUT/pf20_prof.log"
  timeout ${T_AGREE:-150} python3 benchmarks/serve_agreement.py /tmp/serve/grid /tmp/serve/grid1 --limit 64 --ignore-eos \
    --max-batch-size 32 --decode-weights bf16 --out "$OUT/pf20_agree.json" 2>&1 | grep -v -E "$BARS" \
    | tee "$OUT/pf20_agree.log"
  timeout ${T_SERVE:-200} python3 benchmarks/serve_bench.py /tmp/serve/grid /tmp/serve/grid1 /tmp/serve/grid2 \
    /tmp/serve/grid3 --streams ${STREAMS:-32,32} --max-tokens 64 --serial-requests 4 --requests-per-stream ${RPS:-2} \
    --max-batch-size 64 --decode-weights bf16 2>&1 | grep -v -E "$BARS" | tee "$OUT/pf20.log"
fi

if [ "$phase" = ep20 ]; then  # issue 20: the engine in its own process vs a thread of the HTTP server's
  serve_runs
  for engine in ${ENGINES:-on off}; do
    echo "== --engine-process $engine" | tee -a "$OUT/ep20.log"
    timeout ${T_SERVE:-200} python3 benchmarks/serve_bench.py /tmp/serve/grid /tmp/serve/grid1 /tmp/serve/grid2 \
      /tmp/serve/grid3 --streams ${STREAMS:-32,64} --max-tokens 64 --serial-requests 4 \
      --requests-per-stream ${RPS:-2} --max-batch-size 64 --decode-weights bf16 --engine-process $engine 2>&1 \
      | grep -v "Loading weights" | tee -a "$OUT/ep20.log"
  done
fi

if [ "$phase" = gap22 ]; then  # issue 22: the demo's P-tuning on the GPU vs on the CPU, each evaluated on both
  # carry [".wh2", "data", "runs"] with runs/cpu-grid-tiny: the demo run trained on the 2-core CPU (no checkpoints)
  [ -f .wh2/extra/pysite.tar.xz ] && mkdir -p /tmp/pysite && tar -C /tmp/pysite -xJf .wh2/extra/pysite.tar.xz \
    && export PYTHONPATH=${PYTHONPATH:-}:/tmp/pysite
  steps='import json, sys; m = json.load(open(sys.argv[1]))["tuned"]["per_step"]
print(sys.argv[2], {k: round(v["exact_match"], 1) for k, v in m.items()})'
  t=$SECONDS
  timeout ${T_TRAIN:-330} python3 -m tasktune train --config templates/demo/train-tiny.yaml --model templates/demo/tiny-glm \
    --data data/grid --seed 42 --out /tmp/gap/gpu --quantization-bit none --bf16 false --compile off 2>&1 \
    | grep -v -E "$BARS" | tail -3 | tee "$OUT/gap22.log"
  echo "gpu train wall $((SECONDS - t)) s" | tee -a "$OUT/gap22.log"
  python3 -m tasktune eval /tmp/gap/gpu 2>&1 | grep -v -E "$BARS" | tail -2 | tee -a "$OUT/gap22.log"
  mkdir -p /tmp/gap/cpu && cp runs/cpu-grid-tiny/*.json runs/cpu-grid-tiny/*.safetensors /tmp/gap/cpu/
  python3 -m tasktune eval /tmp/gap/cpu 2>&1 | grep -v -E "$BARS" | tail -2 | tee -a "$OUT/gap22.log"
  python3 -c "$steps" /tmp/gap/gpu/eval/metrics.json "trained on GPU, eval on GPU" | tee -a "$OUT/gap22.log"
  python3 -c "$steps" /tmp/gap/cpu/eval/metrics.json "trained on CPU, eval on GPU" | tee -a "$OUT/gap22.log"
  mkdir -p "$OUT/gap22_gpu_run" && cp /tmp/gap/gpu/*.json /tmp/gap/gpu/*.safetensors "$OUT/gap22_gpu_run/"
  cp /tmp/gap/gpu/eval/predictions.jsonl "$OUT/gap22_gpu_gpu_predictions.jsonl"
  cp /tmp/gap/cpu/eval/predictions.jsonl "$OUT/gap22_cpu_gpu_predictions.jsonl"
fi

if [ "$phase" = serve6b ]; then  # issue 20: tasktune serve on a random ChatGLM3-6B-shaped GLM in NF4 (data/grid carried)
  serve_runs
  # issue 20 item 3: the engine's greedy answers (2 runs' rows in shared batches) against eval's generate_batched,
  # 64 dev prompts a run, 64 tokens each (eos ignored on both sides); differing ones with their top-2 logit margin
  timeout ${T_AGREE:-120} python3 benchmarks/serve_agreement.py /tmp/serve/grid /tmp/serve/grid1 --limit 64 --ignore-eos \
    --max-batch-size 32 --decode ${DECODE:-auto} --out "$OUT/serve6b_agree.json" 2>&1 | grep -v "Loading weights" \
    | tee "$OUT/serve6b_agree.log"
  if [ -n "${PROFILE:-}" ]; then  # the engine alone: step times and the busiest kernels, slots vs dynamic
    timeout 150 python3 benchmarks/serve_profile.py /tmp/serve/grid --rows 1,8,32,64 --decode slots \
      --out "$OUT/serve6b_prof_slots.txt" 2>&1 | grep -v 'Loading weights' | tee "$OUT/serve6b_prof.log"
    timeout 90 python3 benchmarks/serve_profile.py /tmp/serve/grid --rows 32 --decode dynamic \
      --out "$OUT/serve6b_prof_dynamic.txt" 2>&1 | grep -v 'Loading weights' | tee -a "$OUT/serve6b_prof.log"
  fi
  timeout ${T_SERVE:-300} python3 benchmarks/serve_bench.py /tmp/serve/grid /tmp/serve/grid1 /tmp/serve/grid2 \
    /tmp/serve/grid3 --streams ${STREAMS:-1,8,32,64} --max-tokens 64 --serial-requests 4 --requests-per-stream 2 \
    --max-batch-size 64 --decode ${DECODE:-auto} 2>&1 | grep -v "Loading weights" | tee "$OUT/serve6b.log"
fi

if [ "$phase" = auto23 ]; then  # issue 23: compile cache cold vs warm, --gradient-checkpointing auto (+ --max-memory 5.5)
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b --text-from data/grid 2>&1 | grep -v 'Writing model' | tail -2
  export TASKTUNE_CACHE=/tmp/ttcache; rm -rf "$TASKTUNE_CACHE"
  # cold: empty caches; warm: the entry's artifacts only (a fresh inductor folder: another machine's view);
  # warm_local: the entry and inductor's own cache ($TASKTUNE_CACHE/compile/inductor, the default on one machine)
  for run in "cold cudagraphs 3 /tmp/ind_cold 190" "warm auto 12 /tmp/ind_warm 90" "warm_local auto 4 /tmp/ind_cold 60"; do
    set -- $run; t=$SECONDS
    TORCHINDUCTOR_CACHE_DIR=$4 timeout $5 python3 -c "$PEAKS" train $TRAIN6B --out /tmp/t23/$1 --compile $2 --max-steps $3 2>&1 \
      | grep -v -E "$BARS" | tail -12 | sed "s/^/[$1] /" | tee -a "$OUT/auto23_train.log"
    echo "[$1] wall $((SECONDS - t)) s" | tee -a "$OUT/auto23_train.log"
    cp /tmp/t23/$1/train_history.json "$OUT/auto23_$1.history.json" 2>/dev/null
    python3 -c "import json; r = json.load(open('/tmp/t23/$1/tasktune_run.json')); print('[$1]', r['compile'], r['checkpointing'])" \
      2>&1 | tee -a "$OUT/auto23_train.log"
  done
  ls -la "$TASKTUNE_CACHE"/compile/* 2>&1 | tee -a "$OUT/auto23_train.log"
  timeout ${T_BENCH:-100} python3 benchmarks/train_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/auto23_bench.json" \
    --methods tasktune,reference --cases 4x64x64,4x256x256 --checkpointing auto,auto:5.5,full --caps "" \
    --steps 5 --warmup 2 2>&1 | grep -v 'Loading weights' | tee "$OUT/auto23_bench.log"
fi

if [ "$phase" = g256 ]; then  # issue 23: graphs at 4 x 256/256 (and 64/64 again), none and full checkpointing
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b --text-from data/grid 2>&1 | grep -v 'Writing model' | tail -2
  timeout ${T_BENCH:-420} python3 benchmarks/train_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/g256.json" \
    --methods tasktune,reference --cases ${G256_CASES:-4x256x256,4x64x64} --checkpointing ${G256_CKPT:-none,full} \
    --compile cudagraphs --caps "" --steps 5 --warmup 2 2>&1 | grep -v 'Loading weights' | tee "$OUT/g256.log"
fi

if [ "$phase" = dq23 ]; then  # issue 23: graphs over bf16 weights dequantised once, beside the recipe on NF4
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b --text-from data/grid 2>&1 | grep -v 'Writing model' | tail -2
  timeout ${T_BENCH:-420} python3 benchmarks/train_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/dq23.json" \
    --methods reference,tasktune --dequantize --cases ${DQ23_CASES:-4x64x64,16x64x64,4x256x256} \
    --checkpointing ${DQ23_CKPT:-none} --compile cudagraphs --caps "" --steps 5 --warmup 2 2>&1 \
    | grep -v 'Loading weights' | tee "$OUT/dq23.log"
fi

if [ "$phase" = tw23 ]; then  # issue 23: `tasktune train` with its defaults on the 6B GLM (--train-weights auto)
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b --text-from data/grid 2>&1 | grep -v 'Writing model' | tail -2
  export TASKTUNE_CACHE=/tmp/ttcache; rm -rf "$TASKTUNE_CACHE"
  # eager (a short cold run: auto stays eager) over bf16 and over 4-bit; cold graphs; the same run warm under auto;
  # auto under --max-memory 5.5
  # TW23_RUNS: a subset, e.g. "eager_auto eager_nocudnn"; a name ending in _nocudnn runs with SDP_NO_CUDNN=1
  for run in "eager_auto 30 190 " "eager_nocudnn 30 190 " "eager_4bit 30 190 --train-weights 4bit" \
             "graphs_cold 30 190 --compile cudagraphs" "graphs_warm 30 120 " "cap55 8 120 --max-memory 5.5" \
             "lite_bf16 30 150 --compile eager-graphs" "lite_4bit 30 150 --compile eager-graphs --train-weights 4bit"; do
    set -- $run; name=$1 steps=$2 limit=$3; shift 3; t=$SECONDS
    [ -n "${TW23_RUNS:-}" ] && [[ " $TW23_RUNS " != *" $name "* ]] && continue
    nocudnn=; [[ $name == *_nocudnn ]] && nocudnn=1
    SDP_NO_CUDNN=$nocudnn timeout $limit python3 -c "$PEAKS" train $TRAIN6B --out /tmp/tw/$name --max-steps $steps "$@" 2>&1 \
      | grep -v -E "$BARS" | grep -v -i "warn" | tail -9 | sed "s/^/[$name] /" | tee -a "$OUT/tw23.log"
    echo "[$name] wall $((SECONDS - t)) s" | tee -a "$OUT/tw23.log"
    cp /tmp/tw/$name/train_history.json "$OUT/tw23_$name.history.json" 2>/dev/null
    python3 - "$name" <<'PY' 2>&1 | tee -a "$OUT/tw23.log"
import json, statistics, sys
name = sys.argv[1]
run = json.load(open(f"/tmp/tw/{name}/tasktune_run.json"))
h = json.load(open(f"/tmp/tw/{name}/train_history.json"))
s = [x["seconds"] for x in h]
steps = [b - a for a, b in zip(s, s[1:])][3:]
print(f"[{name}] compile {run['compile']}; checkpointing {run['checkpointing']['mode']}; weights "
      f"{(run.get('base_weights') or {}).get('mode')}; first step {s[0]:.1f} s; later steps median "
      f"{1000 * statistics.median(steps):.1f} ms (n={len(steps)}); steps over 0.5 s after the first: "
      f"{[round(b - a, 2) for a, b in zip(s, s[1:]) if b - a > 0.5]}; total {s[-1]:.1f} s"
      if steps else f"[{name}] first {s[0]:.1f} s")
PY
  done
  timeout ${T_BENCH:-100} python3 benchmarks/train_bench.py --size 6b --model-dir /tmp/glm6b --out "$OUT/tw23_recipe.json" \
    --methods reference --cases 4x64x64 --caps "" --steps 5 --warmup 2 2>&1 | grep -v 'Loading weights' | tee "$OUT/tw23_recipe.log"
fi

if [ "$phase" = mem23 ]; then  # issue 23: what is live at the bf16 training peak (benchmarks/mem_peak.py), eager and graphs
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b --text-from data/grid 2>&1 | grep -v 'Writing model' | tail -2
  export TASKTUNE_CACHE=/tmp/ttcache
  for run in ${MEM23_RUNS:-eager graphs}; do
    flags="--compile off"; [ "$run" = graphs ] && flags="--compile cudagraphs"
    timeout ${T_MEM:-200} python3 benchmarks/mem_peak.py --top 15 -- train $TRAIN6B --out /tmp/mem/$run --max-steps 6 \
      $flags 2>&1 | grep -v -E "$BARS" | grep -v -i "warn" | tail -60 | sed "s/^/[$run] /" | tee -a "$OUT/mem23.log"
  done
fi

if [ "$phase" = nf4 ]; then  # issue 23: NF4 dequant paths per linear shape (benchmarks/nf4_bench.py; no model build)
  timeout ${T_NF4:-120} python3 benchmarks/nf4_bench.py --m ${NF4_M:-544,2176} --out "$OUT/nf4.json" \
    2> "$OUT/nf4.log" | tee "$OUT/nf4.md"
  tail -5 "$OUT/nf4.log"
  ao=$(ls .wheelhouse/optional/torchao-*.whl 2>/dev/null | head -1)   # optional: not in the phases' *.whl install
  if [ -n "$ao" ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_ao "$ao"; then
    PYTHONPATH=/tmp/site_ao:${PYTHONPATH:-} timeout ${T_AO:-50} python3 benchmarks/nf4_bench.py --m 544 \
      --paths bnb,torchao --iters 10 --out "$OUT/nf4_torchao.json" 2>> "$OUT/nf4.log" | tee "$OUT/nf4_torchao.md"
  else
    echo "torchao row skipped: no .wheelhouse/optional/torchao-*.whl" | tee -a "$OUT/nf4.md"
  fi
fi

if [ "$phase" = warm23 ]; then  # issue 23: where a warm compile cache's first step goes (dynamo's compile_times)
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b --text-from data/grid 2>&1 | grep -v 'Writing model' | tail -1
  export TASKTUNE_CACHE=/tmp/ttcache; rm -rf "$TASKTUNE_CACHE"
  # `tasktune train`, then dynamo's per-phase compile times and the CUDA peaks, printed at exit
  timed='import atexit, runpy, sys, torch
def report():
    from torch._dynamo.utils import compile_times
    print(compile_times(repr="str", aggregate=True), flush=True)
    print("peak_gib", round(torch.cuda.max_memory_allocated() / 2**30, 3), flush=True)
atexit.register(report)
sys.argv = ["tasktune"] + sys.argv[1:]; runpy.run_module("tasktune", run_name="__main__")'
  common="--model /tmp/glm6b --data data/grid --quantization-bit 4 --per-device-train-batch-size 4
          --gradient-accumulation-steps 1 --logging-steps 1 --save-steps 1000 --resume never --max-steps 3"
  bars="$BARS|train: "
  for run in "cold cudagraphs /tmp/ind_cold 200" "warm auto /tmp/ind_warm 150" "warm_local auto /tmp/ind_cold 150"; do
    set -- $run; t=$SECONDS
    TORCHINDUCTOR_CACHE_DIR=$3 timeout $4 python3 -c "$timed" train $common --out /tmp/w23/$1 --compile $2 2>&1 \
      | grep -v -E "$bars" | tail -40 | sed "s/^/[$1] /" | tee -a "$OUT/warm23.log"
    echo "[$1] wall $((SECONDS - t)) s" | tee -a "$OUT/warm23.log"
    cp /tmp/w23/$1/train_history.json "$OUT/warm23_$1.history.json" 2>/dev/null
  done
fi

if [ "$phase" = warm23l ]; then  # issue 23: regional compile (scope layers) vs the whole model, cold and warm first step
  python3 benchmarks/benchmodel.py --size 6b --out /tmp/glm6b --text-from data/grid 2>&1 | grep -v 'Writing model' | tail -1
  export TASKTUNE_CACHE=/tmp/ttcache_l; rm -rf "$TASKTUNE_CACHE" /tmp/ind_l_*
  # `tasktune train` with each step's seconds (first = compile or cache load, + CUDA-graph warm-up), dynamo's graph and
  # cache counters and its per-phase compile times printed at exit
  timed='import atexit, runpy, sys, time, torch
from tasktune.tuning.training import compiling
marks = {"steps": []}
prepare = compiling.prepare
def timed_prepare(*a, **k):
    out = prepare(*a, **k); marks["last"] = time.perf_counter(); return out
compiling.prepare = timed_prepare
after_step = compiling.Plan.after_step
def timed_after_step(self):
    now = time.perf_counter(); marks["steps"].append(round(now - marks["last"], 3)); after_step(self)
    marks["last"] = time.perf_counter()
compiling.Plan.after_step = timed_after_step
def report():
    from torch._dynamo.utils import compile_times, counters
    print(compile_times(repr="str", aggregate=True), flush=True)
    print("counters", dict(counters["stats"]), dict(counters["aot_autograd"]),
          {k: v for k, v in counters["inductor"].items() if "cache" in k}, flush=True)
    print("first_step_s", marks["steps"][:1], "later_steps_s", marks["steps"][1:], "peak_gib",
          round(torch.cuda.max_memory_allocated() / 2**30, 3), flush=True)
atexit.register(report)
sys.argv = ["tasktune"] + sys.argv[1:]; runpy.run_module("tasktune", run_name="__main__")'
  common="--model /tmp/glm6b --data data/grid --quantization-bit 4 --per-device-train-batch-size 4
          --gradient-accumulation-steps 1 --logging-steps 1 --save-steps 1000 --resume never --max-steps 6"
  bars="$BARS|train: |^pass\."
  for scope in ${W23L_SCOPES:-layers model}; do
    for run in "cold cudagraphs ${T_COLD:-160}" "warm auto ${T_WARM:-100}"; do
      set -- $run; t=$SECONDS; name=${scope}_$1
      TASKTUNE_COMPILE_SCOPE=$scope TORCHINDUCTOR_CACHE_DIR=/tmp/ind_l_$name timeout $3 python3 -c "$timed" train $common \
        --out /tmp/w23l/$name --compile $2 2>&1 | grep -v -E "$bars" | tail -45 | sed "s/^/[$name] /" | tee -a "$OUT/warm23l.log"
      echo "[$name] wall $((SECONDS - t)) s" | tee -a "$OUT/warm23l.log"
      python3 -c "import json; r = json.load(open('/tmp/w23l/$name/tasktune_run.json')); print('[$name]', r['compile'], r['checkpointing'])" \
        2>&1 | tail -1 | tee -a "$OUT/warm23l.log"
    done
  done
  grep -h -E '^\[[a-z_]+\] (first_step_s|counters|.* wall )' "$OUT/warm23l.log" | tee "$OUT/warm23l_summary.txt"
fi
