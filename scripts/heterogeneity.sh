#!/usr/bin/env bash
# Issue 17: the heterogeneity experiment. Re-partition the training sites of a benchmark into N sites (IID and
# Dirichlet label skew; `fedmedlora data split`), then run every aggregation rule on each partition with the
# `heterogeneity` preset (`fedmedlora study`), plus Fed-MedLoRA+ with the paper's fixed T = 1 for the temperature
# comparison. Fed-MedLoRA+ (T = 1) against the data-chosen T is compared with `fedmedlora compare`
# (study-<tag>-fixedT/compare.md). Results: docs/heterogeneity.md.
#
# Usage: scripts/heterogeneity.sh [extra study options, e.g. -s train.max_steps=2 -s eval.max_sentences=4]
# Environment (defaults):
#   FEDMEDLORA  the command             (fedmedlora; e.g. .venv/bin/fedmedlora)
#   BENCHMARK   benchmark to partition  (empty: the bundled sample)
#   OUT         output folder           (runs/heterogeneity)
#   SITES       numbers of sites        ("3 10")
#   ALPHAS      Dirichlet alphas        ("inf 0.1"; inf = IID)
#   METHODS     rules to compare        ("fedmedlora fedmedlora+ fedsa ffa rolora")
#   SEED        partition seed          (13)
#   CONFIG      study config / preset   (heterogeneity)
#   FIXED_T     also run Fed-MedLoRA+ with temperature_rule=fixed, T=1 (1; 0 = no)
#   WITH_SIZE   also run Fed-MedLoRA+ with its loss weights multiplied by the sites' sizes
#               (federation.combine_with_size=true; study-<tag>-size) (0; 1 = yes)
#   TOTAL_STEPS local steps per round summed over the sites, split evenly (20; empty: the preset's
#               train.max_steps at every site). Same total compute at every N: 20 gives 7 steps per site at N=3,
#               2 at N=10.
#   SINGLE_SITE 1: a single-site row per new site too (N extra rows; the baseline); 0: none (1)
#   CENTRALIZED 1: the centralized row (the pooled upper bound; the same training data at every N) (1)
#   DROP_OTHER_SITES 1: partitions without the sites that are not split (the new site, external cohorts), so
#               every row is scored in-domain only (1)
# Finished partitions and runs are reused, so an interrupted experiment goes on where it stopped.
set -euo pipefail
FML="${FEDMEDLORA:-fedmedlora}"
OUT="${OUT:-runs/heterogeneity}"
SITES="${SITES:-3 10}"
ALPHAS="${ALPHAS:-inf 0.1}"
METHODS="${METHODS:-fedmedlora fedmedlora+ fedsa ffa rolora}"
SEED="${SEED:-13}"
CONFIG="${CONFIG:-heterogeneity}"
FIXED_T="${FIXED_T:-1}"
WITH_SIZE="${WITH_SIZE:-0}"
TOTAL_STEPS="${TOTAL_STEPS-20}"
SINGLE_SITE="${SINGLE_SITE:-1}"
CENTRALIZED="${CENTRALIZED:-1}"
SPLIT_ARGS=()
if [ "${DROP_OTHER_SITES:-1}" = "1" ]; then SPLIT_ARGS+=(--drop-other-sites); fi
SOURCE=()
if [ -n "${BENCHMARK:-}" ]; then SOURCE=("$BENCHMARK"); fi
METHOD_ARGS=()
for m in $METHODS; do METHOD_ARGS+=(--method "$m"); done
SKIP=(--skip zero_shot --skip new_site --no-encoder)
if [ "$SINGLE_SITE" != "1" ]; then SKIP+=(--skip single_site); fi
if [ "$CENTRALIZED" != "1" ]; then SKIP+=(--skip centralized); fi

mkdir -p "$OUT"
for n in $SITES; do
  for a in $ALPHAS; do
    tag="n${n}-a${a}"
    bench="$OUT/bench-$tag"
    if [ ! -f "$bench/benchmark.json" ]; then
      "$FML" data split "${SOURCE[@]}" --sites "$n" --alpha "$a" --seed "$SEED" --out "$bench" "${SPLIT_ARGS[@]}"
    fi
    STEPS=()
    if [ -n "$TOTAL_STEPS" ]; then
      STEPS=(-s "train.max_steps=$(( (TOTAL_STEPS + n / 2) / n > 0 ? (TOTAL_STEPS + n / 2) / n : 1 ))")
    fi
    "$FML" study --config "$CONFIG" --benchmark "$bench" --out "$OUT/study-$tag" "${SKIP[@]}" \
      "${METHOD_ARGS[@]}" -s "name=het-$tag" "${STEPS[@]}" "$@"
    if [ "$FIXED_T" = "1" ] && [[ " $METHODS " == *" fedmedlora+ "* ]]; then
      "$FML" study --config "$CONFIG" --benchmark "$bench" --out "$OUT/study-$tag-fixedT" \
        --skip zero_shot --skip new_site --skip single_site --skip centralized --no-encoder \
        --method fedmedlora+ -s "name=het-$tag-fixedT" \
        -s federation.temperature_rule=fixed -s federation.temperature=1.0 "${STEPS[@]}" "$@"
      "$FML" compare "$OUT/study-$tag/fed-medlora-plus" "$OUT/study-$tag-fixedT/fed-medlora-plus" \
        --label-a "Fed-MedLoRA+ (data-chosen T)" --label-b "Fed-MedLoRA+ (T = 1)" \
        -o "$OUT/study-$tag-fixedT/compare.md"
    fi
    if [ "$WITH_SIZE" = "1" ] && [[ " $METHODS " == *" fedmedlora+ "* ]]; then
      "$FML" study --config "$CONFIG" --benchmark "$bench" --out "$OUT/study-$tag-size" \
        --skip zero_shot --skip new_site --skip single_site --skip centralized --no-encoder \
        --method fedmedlora+ -s "name=het-$tag-size" -s federation.combine_with_size=true "${STEPS[@]}" "$@"
      "$FML" compare "$OUT/study-$tag-size/fed-medlora-plus" "$OUT/study-$tag/fed-medlora-plus" \
        --label-a "Fed-MedLoRA+ (x size)" --label-b "Fed-MedLoRA+ (data-chosen T)" \
        -o "$OUT/study-$tag-size/compare.md"
    fi
  done
done
echo "heterogeneity experiment written under $OUT (study-<N>-<alpha>/study.md; bench-*/benchmark.json: partitions)"
