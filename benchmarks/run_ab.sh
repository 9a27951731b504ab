#!/usr/bin/env bash
# The device runs that measure what was built since the last committed results, results under $OUT. One part per
# device call, each within 10 minutes:
#   OUT=dir benchmarks/run_ab.sh vit   # every GPU test of kernels and deploy; bench_stem (cuDNN vs Triton stem);
#                                      # bench_vit with the compiled static forms and, for head skipping, laudnet's
#                                      # varlen attention against flash over every head (compare with
#                                      # bench_vit_h200_46d5962.json)
#   OUT=dir benchmarks/run_ab.sh cnn   # bench_models ResNet-101 (tuned and dense-masked compiled whole, rate 0.5;
#                                      # compare with bench_models_tuned_r101_h200_56fa110.json)
#   OUT=dir benchmarks/run_ab.sh fastest   # GPU tests of deploy_fastest; bench_fastest.py on ResNet-101, batch 128
#                                          # and 1 (compare with bench_fastest_r101_b1_h200_d6ea585.json)
#   OUT=dir benchmarks/run_ab.sh fastest-vit   # bench_fastest.py on DeiT-S (token, head, layer), batch 128 and 1
#   OUT=dir benchmarks/run_ab.sh stem      # GPU tests of the stem kernel and conditional graphs; bench_models
#                                          # ResNet-101 layer skipping with deploy(stem="triton") for every laudnet
#                                          # network, tuned, with and without conditional nodes (compare the static
#                                          # and dynamic times with bench_models_tuned_r101_h200_56fa110.json)
#   OUT=dir benchmarks/run_ab.sh conditional   # GPU tests of conditional CUDA-graph nodes; bench_models ResNet-101
#                                              # layer and spatial skipping, tuned, with and without them
#   OUT=dir benchmarks/run_ab.sh kernels-b1   # bench_layer_kernels at batch 1 (one executing sample), with the
#                                             # small tiles: which tile config each stage wants at batch 1
#   OUT=dir benchmarks/run_ab.sh next     # what the last session built, in one call (~5 min): GPU tests of the
#                                         # attention kernel and the ViT paths, bench_vit head skipping (laudnet's
#                                         # attention against flash heads), the batch-1 tile sweep and the
#                                         # stem's tile heights
#   OUT=dir benchmarks/run_ab.sh cnn-ab   # bench_models ResNet-101 (rate 0.5, batch 128 and 1, not tuned) of the code
#                                         # before the package refactor (39d9c8c) and of this tree, one after the
#                                         # other on one machine: first `mkdir -p .old && git archive 39d9c8c laudnet
#                                         # benchmarks | tar -x -C .old`, then carry .old (~7 min)
#   OUT=dir benchmarks/run_ab.sh dense-maskers   # the dense-masked fallback's masker forms at batch 1 and 128
#   OUT=dir benchmarks/run_ab.sh demo-gap (then demo-gap-2)   # the demo recipe's variants, to close its accuracy gap
#   OUT=dir benchmarks/run_ab.sh demo-gap-variance (then demo-gap-variance-2)   # the EMA of the weights and BN
#                                          # recalibration against the demo's recipe, seeds 0-4 (its seed spread)
#   OUT=dir benchmarks/run_ab.sh demo-gap-warmup   # the FLOPs target's warm-up ("target warm-up 1/3") against
#                                          # the demo's recipe, seeds 0-4, paired by seed (~5 min; carry .data)
#   OUT=dir benchmarks/run_ab.sh demo-gap-five   # the three variants that led over two or three seeds
#                                          # ("patch 4-2-1-1", "warm-up 0.3 epoch", "lambda 3") and the demo's
#                                          # recipe over seeds 0-4 (~8 min; carry .data)
#   OUT=dir benchmarks/run_ab.sh demo-gap-lambda   # weaker FLOPs weights (λ 3, λ 5, λ 3 at t = 0.47: the gain of
#                                          # λ 3 without its FLOPs overshoot?) and the demo, seeds 0-4 (~8 min; .data)
#   OUT=dir benchmarks/run_ab.sh full-r101 (or full-r50)   # the engine issue's whole-model table: every paradigm at
#                                          # rates 0.25 / 0.5 / 0.75 (and FLOPs 0.5), batch 128 and 1, tuned
#   OUT=dir benchmarks/run_ab.sh detection   # GPU tests of deploy_detector; bench_detection.py: LAUD-ResNet-50
#                                          # Faster R-CNN, backbone and whole detector against the static detector's
#                                          # strongest form, 800x1216 and 256x256, batch 1 and 8, every paradigm at
#                                          # rates 0.25 / 0.5 / 0.75 (heads fp32 and bf16); cases past its budget are
#                                          # listed as skipped: rerun them with DET_ARGS (e.g. "--sizes 256x256");
#                                          # CKPT=<laudnet checkpoint> adds its trained maskers on fashion-canvas-det
#                                          # (carry the file and .data); carry .whl with pycocotools' cp312 wheel
#   OUT=dir benchmarks/run_ab.sh detection-results   # issue 21 item 6: LAUD-ResNet-50 Mask R-CNN and Faster R-CNN
#                                          # on fashion-canvas-det, static and t = 0.5 per paradigm, box/mask AP,
#                                          # FLOPs, batch-1 latency at 800x1216 and 256x256; ~21 min: run it up to
#                                          # three times on the same warm machine until it prints rc=0 (carry .data
#                                          # and .whl: pycocotools' cp312 wheel, which the device image lacks)
#   OUT=dir benchmarks/run_ab.sh detection-first   # the first detection call when device time is short (~8 min;
#                                          # carry .data and .whl): the GPU tests of deploy_detector (beside it, 150 s)
#                                          # and detection-results for Mask R-CNN static, spatial and layer at
#                                          # 800x1216 only, the goal's case; then DET_RESULTS_ARGS="--sizes 800x1216"
#                                          # detection-results adds the rest (a timed network is not timed again)
# COMMIT=<hash> names the results (default: git's HEAD, which a copied working tree may not have moved); the
# card's model (h100, h200) is read from nvidia-smi.
set -u
part=${1:?"usage: OUT=dir $0 vit|cnn|fastest|fastest-vit|stem|conditional|next|kernels-b1|full-r101|full-r50|recipe-seeds|cnn-ab|dense-maskers|demo-gap|demo-gap-2|demo-gap-variance|demo-gap-variance-2|demo-gap-warmup|demo-gap-five|demo-gap-lambda|pareto|detection|detection-first|detection-results"}
out=${OUT:?"set OUT to the results folder"}
c=${COMMIT:-$(git rev-parse --short HEAD)}
# the card that runs this, in file names (h100, h200, ...; "gpu" where nvidia-smi says nothing usable)
dev=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -io 'h[0-9]\+' | tr A-Z a-z)
dev=${dev:-gpu}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# pycocotools is not on the device image: the detection parts install the wheel carried in .whl (see below)
need_cocotools() {
    python -c "import pycocotools" 2>/dev/null && return
    ls .whl/pycocotools-*.whl >/dev/null 2>&1 || { echo "pycocotools is missing: carry .whl with its cp312 wheel" \
        "(pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl" \
        "pycocotools)"; exit 2; }
    python -m pip install -q --no-index --no-deps .whl/pycocotools-*.whl
}
case $part in
vit)
    # ~90 s warm, longer on a fresh machine (Triton and Inductor compile caches empty)
    timeout 300 python -m pytest -q tests/kernels tests/deploy -k "cuda or gpu" > "$out/pytest_gpu_${dev}_$c.txt" 2>&1
    tail -3 "$out/pytest_gpu_${dev}_$c.txt"
    timeout 90 python benchmarks/bench_stem.py --out "$out/bench_stem_r101_${dev}_$c.json" --commit "$c" 2>&1 | tail -4
    timeout 270 python benchmarks/bench_vit.py --batches 128 1 --budget-s 140 \
        --out "$out/bench_vit_${dev}_$c.json" --commit "$c" > "$out/bench_vit_${dev}_$c.log" 2>&1
    python benchmarks/bench_vit.py --report "$out/bench_vit_${dev}_$c.json" | head -40 ;;
cnn)
    name=bench_models_tuned_r101_${dev}_$c
    timeout 540 python benchmarks/bench_models.py --models laud_resnet101 --batches 128 1 --tune --rates 0.5 \
        --dense-whole --out "$out/$name.json" --commit "$c" > "$out/$name.log" 2>&1
    python benchmarks/report_models.py "$out/$name.json" | grep -v "^$" | head -40 ;;
fastest)
    timeout 150 python -m pytest -q tests/deploy/test_tune.py -k "gpu" > "$out/pytest_fastest_gpu_${dev}_$c.txt" 2>&1
    tail -2 "$out/pytest_fastest_gpu_${dev}_$c.txt"
    timeout 420 python benchmarks/bench_fastest.py --batches 128 1 --out "$out/bench_fastest_r101_${dev}_$c.json" \
        --commit "$c" 2>&1 | grep "^{" | cut -c1-240 ;;
fastest-vit)
    timeout 540 python benchmarks/bench_fastest.py --model laud_deit_small --paradigms token head layer \
        --batches 128 1 --out "$out/bench_fastest_deit_s_${dev}_$c.json" --commit "$c" 2>&1 | grep "^{" | cut -c1-240 ;;
stem)
    timeout 200 python -m pytest -q tests/kernels/test_stem_kernels.py tests/deploy/test_deploy.py \
        tests/deploy/test_conditional.py -k "gpu or cuda" > "$out/pytest_stem_gpu_${dev}_$c.txt" 2>&1
    tail -2 "$out/pytest_stem_gpu_${dev}_$c.txt"
    name=bench_models_stem_triton_r101_${dev}_$c
    timeout 420 python benchmarks/bench_models.py --models laud_resnet101 --paradigms layer --batches 1 128 \
        --rates 0.5 --stem triton --tune --conditional --out "$out/$name.json" --commit "$c" > "$out/$name.log" 2>&1
    python benchmarks/report_models.py "$out/$name.json" | grep -v "^$" | head -30 ;;
conditional)
    python -m pytest -q tests/deploy/test_conditional.py > "$out/pytest_conditional_gpu_${dev}_$c.txt" 2>&1
    tail -2 "$out/pytest_conditional_gpu_${dev}_$c.txt"
    name=bench_models_conditional_r101_${dev}_$c
    timeout 540 python benchmarks/bench_models.py --models laud_resnet101 --paradigms layer spatial --batches 1 128 \
        --rates 0.5 --tune --conditional --out "$out/$name.json" --commit "$c" > "$out/$name.log" 2>&1
    python benchmarks/report_models.py "$out/$name.json" | grep -v "^$" | head -40 ;;
next)
    timeout 150 python -m pytest -q tests/kernels/test_attention_kernels.py \
        tests/deploy/test_deploy_vit_modes.py -k "cuda or gpu" > "$out/pytest_next_gpu_${dev}_$c.txt" 2>&1
    tail -2 "$out/pytest_next_gpu_${dev}_$c.txt"
    timeout 150 python benchmarks/bench_vit.py --batches 128 1 --token-rates --head-rates 0.5 0.33 --layer-rates \
        --spread 0 --no-combo --budget-s 100 --out "$out/bench_vit_heads_${dev}_$c.json" --commit "$c" \
        > "$out/bench_vit_heads_${dev}_$c.log" 2>&1
    python benchmarks/bench_vit.py --report "$out/bench_vit_heads_${dev}_$c.json" | grep -i "head\|flash" | cut -c1-200
    timeout 100 python benchmarks/bench_layer_kernels.py --batch 1 --count 1 \
        --out "$out/bench_layer_kernels_b1_${dev}_$c.json" --commit "$c" 2>&1 | tail -16
    timeout 90 python benchmarks/bench_stem.py --out "$out/bench_stem_r101_${dev}_$c.json" --commit "$c" 2>&1 | tail -14 ;;
kernels-b1)
    timeout 300 python benchmarks/bench_layer_kernels.py --batch 1 --count 1 \
        --out "$out/bench_layer_kernels_b1_${dev}_$c.json" --commit "$c" 2>&1 | tail -20 ;;
full-r101|full-r50)
    m=laud_resnet${part#full-r}
    name=bench_models_full_${part#full-}_${dev}_$c
    timeout 570 python benchmarks/bench_models.py --models "$m" --batches 128 1 --tune --rates 0.25 0.5 0.75 \
        --out "$out/$name.json" --commit "$c" > "$out/$name.log" 2>&1
    python benchmarks/report_models.py "$out/$name.json" | grep -v "^$" | head -40 ;;
recipe-seeds)
    # the masker recipe over three seeds (carry .data: the Fashion-MNIST files); one call, ~8 minutes
    timeout 560 python benchmarks/recipe_ablation.py --device cuda --jobs 8 --data-root .data/fashion-mnist \
        --seeds 0 1 2 --only spatial/paper "spatial/norm+anneal" "spatial/norm+anneal, masker lr x1" layer/paper \
        "layer/norm+anneal" --out runs/abl-seeds --commit "$c" > "$out/recipe_ablation_seeds_$c.log" 2>&1
    cp runs/abl-seeds/recipe_ablation.json "$out/recipe_ablation_seeds_$c.json"; tail -12 "$out/recipe_ablation_seeds_$c.log" ;;
cnn-ab)
    out=$(cd "$out" && pwd)
    [ -d .old/laudnet ] || { echo "no .old: see the header (git archive 39d9c8c into .old, carry it)"; exit 2; }
    for side in old new; do
        name=bench_models_ab_${side}_r101_${dev}_$c
        dir=$([ $side = old ] && echo .old || echo .)
        (cd "$dir" && PYTHONPATH=$PWD timeout 280 python benchmarks/bench_models.py --models laud_resnet101 \
            --batches 128 1 --rates 0.5 --out "$out/$name.json" --commit "$side-$c" > "$out/$name.log" 2>&1)
        echo "$side: rc=$?"
        python benchmarks/report_models.py "$out/$name.json" | grep -E "— static|^\| (layer|channel|spatial)" | cut -c1-200
    done ;;
dense-maskers)
    # the dense-masked fallback's masker forms (torch, reduce, fixed) at batch 1 and 128 (ResNet-101, every
    # paradigm), ~8 minutes (about 23 s per row: a whole-network compile each)
    timeout 560 python benchmarks/probe_dense_maskers.py --batches 1 128 --out "$out/probe_dense_maskers_${dev}_$c.json" \
        --commit "$c" 2>&1 | grep "^{" | cut -c1-200 ;;
demo-gap|demo-gap-2)
    # variants of the demo's dynamic fine-tuning (benchmarks/configs/demo-gap-variants.yaml), seed 0, in two calls
    # of ~7 minutes: the first also runs the demo's own recipe over seeds 1 and 2, the second the layer-skipping
    # recipe over seeds 0-2 (its adaptivity over seeds); carry .data
    abl="python benchmarks/recipe_ablation.py --device cuda --data-root .data/fashion-mnist --out runs/demo-gap
         --variants benchmarks/configs/demo-gap-variants.yaml --commit $c"
    if [ "$part" = demo-gap ]; then
        timeout 330 $abl --jobs 8 --only demo "final temperature 0.5" "final temperature 1" "lambda 3" \
            "KD temperature 1" "KD weight 0.9" "bounds over 2/3" "target 0.55" > "$out/demo_gap_$c.log" 2>&1
        timeout 200 $abl --jobs 2 --only demo --seeds 1 2 >> "$out/demo_gap_$c.log" 2>&1
    else
        timeout 330 $abl --jobs 6 --only "masker lr x1" "lr 0.01" "warm-up 0.3 epoch" "noise to 0.3" \
            "4 epochs, lr 0.01" "patch 4-2-1-1" > "$out/demo_gap_$c.log" 2>&1
        timeout 200 $abl --jobs 3 --only layer/norm+anneal --seeds 0 1 2 >> "$out/demo_gap_$c.log" 2>&1
    fi
    cp runs/demo-gap/recipe_ablation.json "$out/demo_gap_$c.json"; tail -30 "$out/demo_gap_$c.log" ;;
demo-gap-variance|demo-gap-variance-2)
    # the variance reducers of demo-gap-variants.yaml (EMA 0.988, BN recalibration 50, both) and the demo's own recipe
    # over seeds 0-4, paired by seed, in two calls on one warm machine (the second reuses the static network; on a
    # fresh one it trains it again); a call cut short keeps its finished runs: run it again; carry .data
    abl="python benchmarks/recipe_ablation.py --device cuda --data-root .data/fashion-mnist
         --out runs/demo-gap-variance --variants benchmarks/configs/demo-gap-variants.yaml --commit $c --jobs 10
         --seeds 0 1 2 3 4"
    log="$out/demo_gap_variance_${dev}_$c.log"
    if [ "$part" = demo-gap-variance ]; then
        timeout 540 $abl --only demo "EMA 0.988" >> "$log" 2>&1
    else
        timeout 540 $abl --only "BN recalibration 50" "EMA 0.988 + BN recalibration 50" >> "$log" 2>&1
    fi
    cp runs/demo-gap-variance/recipe_ablation.json "$out/demo_gap_variance_${dev}_$c.json"; tail -30 "$log" ;;
demo-gap-five|demo-gap-warmup|demo-gap-lambda)
    # variants against the demo's recipe over seeds 0-4 (recipe_ablation's JSON and log named by the part)
    if [ "$part" = demo-gap-five ]; then
        variants=("patch 4-2-1-1" "warm-up 0.3 epoch" "lambda 3")
    elif [ "$part" = demo-gap-lambda ]; then
        variants=("lambda 3" "lambda 5" "lambda 3, target 0.47")
    else
        variants=("target warm-up 1/3")
    fi
    name=${part//-/_}_${dev}_$c
    timeout 580 python benchmarks/recipe_ablation.py --device cuda --data-root .data/fashion-mnist \
        --out "runs/$part" --variants benchmarks/configs/demo-gap-variants.yaml --commit "$c" --jobs 10 \
        --seeds 0 1 2 3 4 --only demo "${variants[@]}" >> "$out/$name.log" 2>&1
    cp "runs/$part/recipe_ablation.json" "$out/$name.json"; tail -12 "$out/$name.log" ;;
detection)
    need_cocotools
    # ~9 minutes: the GPU tests (both deployed forms per paradigm, compiled and graphed; fastest), then the benchmark
    # under a budget; the sparse form's block paths compile with symbolic sizes (--sparse-compile dynamic) so that
    # four sizes x batches fit one call (the static and dense-masked bodies compile whole at static shapes)
    timeout 150 python -m pytest -q tests/detection/test_detection_deploy.py -k gpu > "$out/pytest_detection_gpu_${dev}_$c.txt" 2>&1
    tail -2 "$out/pytest_detection_gpu_${dev}_$c.txt"
    name=bench_detection_r50_${dev}_$c
    timeout 390 python benchmarks/bench_detection.py --sizes 800x1216 256x256 --batches 1 8 --heads-bf16 \
        --sparse-compile dynamic --budget-s 330 ${CKPT:+--checkpoint "$CKPT" --data-root .data/fashion-mnist} \
        ${DET_ARGS:-} --out "$out/$name.json" --commit "$c" > "$out/$name.log" 2>&1; echo "rc=$?"
    sed -n '/^| size/,$p' "$out/$name.log" | cut -c1-200 ;;
pareto)
    # the accuracy-latency figure; rerun until it prints rc=0 (carry .whl with torch-pruning and .data)
    python -m pip install -q --no-deps .whl/torch_pruning-*.whl
    python benchmarks/pareto.py --data-root .data/fashion-mnist --out runs/pareto --commit "$c" --budget-minutes 8.4 \
        --no-progress > "$out/pareto_$c.log" 2>&1; echo "rc=$?"
    cp runs/pareto/{pareto.json,pareto.md,pareto_latency.png,pareto_flops.png} "$out/"; tail -30 "$out/pareto_$c.log" ;;
detection-first)
    need_cocotools
    (timeout 150 python -m pytest -q -p no:cacheprovider tests/detection/test_detection_deploy.py -k gpu \
        > "$out/pytest_detection_gpu_${dev}_$c.txt" 2>&1 &)
    DET_RESULTS_ARGS="--detectors maskrcnn --paradigms spatial layer --sizes 800x1216 ${DET_RESULTS_ARGS:-}" \
        bash "$0" detection-results
    tail -3 "$out/pytest_detection_gpu_${dev}_$c.txt" ;;
detection-results)
    need_cocotools
    # the detection results table; rerun until it prints rc=0 (carry .data); a call stops before a unit that would
    # not fit 8.4 minutes (a training in progress saves last.pt and resumes next call; finished units are kept)
    python benchmarks/detection_results.py --data-root .data/fashion-mnist --out runs/det-results --commit "$c" \
        --budget-minutes 8.4 --no-progress ${DET_RESULTS_ARGS:-} > "$out/detection_results_$c.log" 2>&1; echo "rc=$?"
    cp runs/det-results/{detection_results.json,detection_results.md,readme_table.md,units.json} "$out/"
    grep -v "^   \\$ laudnet" "$out/detection_results_$c.log" | grep "^==\|^budget\|^error\|^total\|^|\|goal" | tail -40 ;;
*) echo "unknown part $part (vit, cnn, fastest, fastest-vit, stem, conditional, next, kernels-b1, full-r101, full-r50, recipe-seeds, pareto, detection, detection-first, detection-results)" >&2; exit 2 ;;
esac
