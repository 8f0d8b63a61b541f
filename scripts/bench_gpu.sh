#!/usr/bin/env bash
# Every GPU number of docs/benchmarks.md in one run (sized for a lent H200: a few minutes of device time).
#   scripts/bench_gpu.sh OUTDIR [GROUP ...]   (from the repository root; needs torch with CUDA, matplotlib)
# Full-size architectures with seeded random weights (speed does not depend on weight values), bf16, batch 1,
# warm runs only; writes gpu.txt (+ the tables of the guidance, syncs, loading, int8 and 8B groups), one JSON per other
# group and a latency/memory plot into OUTDIR: 8 files at most (what the device tool returns).
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

# Groups in priority order (a run stopped at its time limit still returns the finished groups' files); name groups
# after OUTDIR to run only those, e.g. scripts/bench_gpu.sh OUT resolutions guidance.
groups=${*:2}
groups=${groups:-"infinity-1024 hart var infinity-2048 resolutions infinity-1344 guidance syncs loading int8 infinity-8b"}
for group in $groups; do
    case $group in
    infinity-1024)  # Infinity-2B 1024²: baseline, the paper preset, candidates for the best preset (target >= 4x)
        bench --model infinity-2b --resolutions 1024 --warmup 2 --repeats 5 --out "$out/infinity_1024.json" --pruning \
            "none|infinity-paper|0.5,0.75,1,1;layers=3:28|0.4,0.5,1,1|0.5,1,1,1;layers=3:28|0.4,0.5,1,1;layers=3:28;granularity=block" ;;
    hart)  # HART-0.7B 1024²
        bench --model hart-0.7b --pruning "none|hart-paper" --warmup 2 --repeats 5 --out "$out/hart.json" ;;
    var)  # VAR-d30 256², the preset alone and with guidance off at the last two steps
        bench --model var-d30 --pruning "none|var-fastvar" --cfg-off-last 0,2 --warmup 2 --repeats 5 --out "$out/var.json" ;;
    infinity-2048)  # zero-shot 2048²: latency and peak memory (target: under 15 GB)
        bench --model infinity-2b --resolutions 2048 --pruning "none|infinity-2048" --warmup 1 --repeats 3 \
            --out "$out/infinity_2048.json" ;;
    resolutions)  # latency and memory vs token count, 512² to 2048², baseline vs the paper preset (the paper's Fig. 2)
        bench --model infinity-2b --resolutions 512,1024,1344,2048 --pruning "none|infinity-paper" --warmup 1 \
            --repeats 2 --out "$out/infinity_resolutions.json" --plot "$out/infinity_resolutions.png" ;;
    infinity-1344)
        bench --model infinity-2b --resolutions 1344 --pruning "none|infinity-1344" --warmup 1 --repeats 3 \
            --out "$out/infinity_1344.json" ;;
    guidance)  # guidance off at the last steps, alone and with the paper preset; its table goes into gpu.txt
        bench --model infinity-2b --resolutions 1024 --pruning "none|infinity-paper" --cfg-off-last 0,2,4 --warmup 1 \
            --repeats 3 >> "$out/gpu.txt" ;;
    syncs)  # host-device synchronisations inside the loop (torch's sync debug mode); the goal is none
        python3 scripts/check_syncs.py >> "$out/gpu.txt" || { failed=1; echo "FAILED: check_syncs" | tee -a "$out/gpu.txt" >&2; } ;;
    loading)  # device peak of loading a bf16 Infinity-2B checkpoint into bf16 blocks (writes 4.4 GB under /tmp)
        python3 scripts/load_peak.py --config infinity-2b --checkpoint-dtype bf16 --dtype bf16 --device cuda \
            --dir /tmp/fastvar_ckpt >> "$out/gpu.txt" || { failed=1; echo "FAILED: load_peak" | tee -a "$out/gpu.txt" >&2; } ;;
    int8)  # int8 block weights: speed and memory of Infinity-2B 1024², alone and with the paper preset
        bench --model infinity-2b --resolutions 1024 --pruning "none|infinity-paper" --quantize int8 --warmup 1 \
            --repeats 3 >> "$out/gpu.txt" ;;
    infinity-8b)  # Infinity-8B 1024² (bf16 weights 15.9 GiB), baseline and the paper preset
        bench --model infinity-8b --resolutions 1024 --pruning "none|infinity-paper" --warmup 1 --repeats 3 \
            >> "$out/gpu.txt" ;;
    *) echo "unknown group $group" >&2; failed=1 ;;
    esac
done
exit $failed
