#!/usr/bin/env bash
# Every GPU number of docs/benchmarks.md in one run (sized for a lent H200: a few minutes of device time).
#   scripts/bench_gpu.sh OUTDIR        (from the repository root; needs torch with CUDA, matplotlib)
# Full-size architectures with seeded random weights (speed does not depend on weight values), bf16, batch 1,
# warm runs only; writes gpu.txt (+ the guidance-off table), one JSON per model group and a latency/memory plot
# into OUTDIR.
set -euo pipefail
out=${1:?usage: scripts/bench_gpu.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
peak=${PEAK_TFLOPS:-790}  # dense bf16 measured on the lent H200 (8192^3 matmul); an H100 SXM spec says 989
failed=0
bench() {  # one group; a failure is reported and the next group still runs
    python3 -m fastvar.cli bench --random-weights --dtype bf16 --device cuda --peak-tflops "$peak" "$@" \
        || { failed=1; echo "FAILED: fastvar bench $*" | tee -a "$out/gpu.txt" >&2; }
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" >> "$out/gpu.txt"

# Infinity-2B: latency and memory vs token count (512² to zero-shot 2048²), baseline vs the paper preset (the plot);
# then, each group side by side in one process: candidates for the best preset at 1024², the zero-shot presets.
bench --model infinity-2b --resolutions 512,1024,1344,2048 --pruning "none|infinity-paper" \
    --warmup 1 --repeats 3 --out "$out/infinity_resolutions.json" --plot "$out/infinity_resolutions.png"
bench --model infinity-2b --resolutions 1024 \
    --pruning "none|infinity-paper|0.5,0.75,1,1;layers=3:28|0.4,0.5,1,1|0.5,1,1,1;layers=3:28|0.4,0.5,1,1;layers=3:28;granularity=block" \
    --warmup 2 --repeats 5 --out "$out/infinity_1024.json"
# guidance off at the last steps, alone and with the paper preset (whose last two steps are skipped); table -> gpu.txt
bench --model infinity-2b --resolutions 1024 --pruning "none|infinity-paper" --cfg-off-last 0,2,4 --warmup 1 \
    --repeats 3 >> "$out/gpu.txt"
bench --model infinity-2b --resolutions 1344 --pruning "none|infinity-1344" --warmup 1 --repeats 3 \
    --out "$out/infinity_1344.json"
bench --model infinity-2b --resolutions 2048 --pruning "none|infinity-2048" --warmup 1 --repeats 3 \
    --out "$out/infinity_2048.json"
# HART-0.7B 1024² and VAR-d30 256²
bench --model hart-0.7b --pruning "none|hart-paper" --warmup 2 --repeats 5 --out "$out/hart.json"
bench --model var-d30 --pruning "none|var-fastvar|0.5,0.75" --warmup 2 --repeats 5 --out "$out/var.json"
exit $failed
