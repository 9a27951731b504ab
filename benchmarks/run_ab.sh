#!/usr/bin/env bash
# A/B runs of the options built but not yet measured on a GPU, each against the current default in a separate
# process (torch.compile caches are per process), results under $OUT. Two parts, each within a 10-minute device call:
#   OUT=dir benchmarks/run_ab.sh vit   # GPU tests of kernels and deploy; bench_vit with and without --fuse-rows
#   OUT=dir benchmarks/run_ab.sh cnn   # bench_models ResNet-101 (tuned) with dynamic- and static-shape compile
set -u
part=${1:?"usage: OUT=dir $0 vit|cnn"}
out=${OUT:?"set OUT to the results folder"}
c=${COMMIT:-$(git rev-parse --short HEAD)}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
case $part in
vit)
    python -m pytest -q tests/kernels tests/deploy -k "cuda or gpu" > "$out/pytest_gpu_h200_$c.txt" 2>&1
    tail -3 "$out/pytest_gpu_h200_$c.txt"
    for flag in "" --fuse-rows; do
        name=bench_vit${flag:+_fuse_rows}_h200_$c
        timeout 200 python benchmarks/bench_vit.py --batches 128 1 --no-compile --budget-s 120 $flag \
            --out "$out/$name.json" --commit "$c" > "$out/$name.log" 2>&1
        grep -A14 "batch 128\*\*" "$out/$name.log" | head -16
    done ;;
cnn)
    for shapes in dynamic static; do
        name=bench_models_tuned_r101_${shapes}_h200_$c
        timeout 280 python benchmarks/bench_models.py --models laud_resnet101 --batches 128 1 --tune \
            --rates 0.5 --compile-shapes $shapes --out "$out/$name.json" --commit "$c" > "$out/$name.log" 2>&1
        python benchmarks/report_models.py "$out/$name.json" | grep -v "^$" | head -40
    done ;;
*) echo "unknown part $part (vit or cnn)" >&2; exit 2 ;;
esac
