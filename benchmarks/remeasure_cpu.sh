#!/usr/bin/env bash
# Re-measure a committed CPU report the way issue 27 asks: one invocation of the committed code, in a fresh run
# folder and report folder, nothing reused, timed; then copy the report (report.json, report.md, plots) into
# benchmarks/results/<name>/ and print the README tables from it (benchmarks/report_tables.py).
#
# Usage, from the repository root, with nothing else heavy running (each takes over an hour on 2 cores):
#   bash benchmarks/remeasure_cpu.sh cub-cpu   "cub:../shared/data/cub100"
#   bash benchmarks/remeasure_cpu.sh faces-cpu "celeba:../shared/data/celeba6k"
# One part of a recipe: SETS (space-separated --set values) and DEST (the folder under benchmarks/results), e.g.
#   SETS="benchmark.shots_per_class=[5,10]" DEST=cub-cpu/shots-5-10 bash benchmarks/remeasure_cpu.sh cub-cpu "cub:..."
# The run and its log stay in ${WORK:-/tmp/remeasure}/<dest>/ (benchmark.log, time.txt); report.json's provenance
# records the commit and whether the tree had uncommitted changes (commit first).
set -euo pipefail
name=${1:?usage: remeasure_cpu.sh RECIPE DATA_SPEC}
spec=${2:?usage: remeasure_cpu.sh RECIPE DATA_SPEC}
root=$(pwd)
format=${spec%%:*}; path=${spec#*:}
case $path in /*) ;; *) spec="$format:$root/$path" ;; esac  # the run happens in its own folder
dest_name=${DEST:-$name}
work=${WORK:-/tmp/remeasure}/$dest_name
extra=()
read -ra items <<< "${SETS:-}"  # no glob expansion of the [..] in a value
for item in "${items[@]}"; do extra+=(--set "$item"); done
if [ -e "$work" ]; then
  echo "$work exists: a re-measurement starts from nothing; move it away first." >&2
  exit 1
fi
mkdir -p "$work"
cd "$work"
/usr/bin/time -f "%e s wall, %M KB peak resident" -o time.txt \
  synthaug benchmark "$root/recipes/$name.toml" --set "data.spec=$spec" "${extra[@]}" --set "run_dir=$work/run" --out "$work/report" \
  > benchmark.log 2>&1
cat time.txt
dest="$root/benchmarks/results/$dest_name"
mkdir -p "$dest"
cp report/report.json report/report.md report/*.png "$dest/"
python "$root/benchmarks/report_tables.py" "$dest/report.json"
