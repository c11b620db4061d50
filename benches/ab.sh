#!/bin/sh
# LOAD_WRAP for A/B cells (BENCHMARKS.md): the load harness puts this before bindgate's command
# line; each start runs the next binary of $AB_BINS (space-separated) in turn, counting in
# $AB_COUNT (a file; the order it ran them in goes to $AB_COUNT.order).
n=$(cat "$AB_COUNT" 2>/dev/null || echo 0)
echo $((n + 1)) > "$AB_COUNT"
shift
set -- $AB_BINS "$@"
count=$(echo $AB_BINS | wc -w)
i=$((n % count))
j=0
for b in $AB_BINS; do
  shift
  if [ $j -eq $i ]; then bin=$b; fi
  j=$((j + 1))
done
echo "$n $bin" >> "$AB_COUNT.order"
exec "$bin" "$@"
