#!/usr/bin/env bash
# Issue 17: the heterogeneity experiment. Re-partition the training sites of a benchmark into N sites (IID and
# Dirichlet label skew; `fedmedlora data split`), then run every aggregation rule on each partition with the
# `heterogeneity` preset (`fedmedlora study`), plus Fed-MedLoRA+ with the paper's fixed T = 1 for the temperature
# comparison. Figures: not measured yet (docs/federation.md, "Heterogeneity").
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
SOURCE=()
if [ -n "${BENCHMARK:-}" ]; then SOURCE=("$BENCHMARK"); fi
METHOD_ARGS=()
for m in $METHODS; do METHOD_ARGS+=(--method "$m"); done
SKIP=(--skip zero_shot --skip single_site --skip new_site --no-encoder)

mkdir -p "$OUT"
for n in $SITES; do
  for a in $ALPHAS; do
    tag="n${n}-a${a}"
    bench="$OUT/bench-$tag"
    if [ ! -f "$bench/benchmark.json" ]; then
      "$FML" data split "${SOURCE[@]}" --sites "$n" --alpha "$a" --seed "$SEED" --out "$bench"
    fi
    "$FML" study --config "$CONFIG" --benchmark "$bench" --out "$OUT/study-$tag" "${SKIP[@]}" \
      "${METHOD_ARGS[@]}" -s "name=het-$tag" "$@"
    if [ "$FIXED_T" = "1" ] && [[ " $METHODS " == *" fedmedlora+ "* ]]; then
      "$FML" study --config "$CONFIG" --benchmark "$bench" --out "$OUT/study-$tag-fixedT" "${SKIP[@]}" \
        --skip centralized --method fedmedlora+ -s "name=het-$tag-fixedT" \
        -s federation.temperature_rule=fixed -s federation.temperature=1.0 "$@"
    fi
  done
done
echo "heterogeneity experiment written under $OUT (study-<N>-<alpha>/study.md; bench-*/benchmark.json: partitions)"
