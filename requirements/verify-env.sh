#!/usr/bin/env bash
# `make verify-env`: does the lock rebuild the same study on this machine type?
#
# Two fresh clones of the current commit (uncommitted changes are not in them), each set up by `make setup` from
# requirements/lock.txt into its own .venv, each building RECIPE (default smoke) from its own empty cache
# (DIVSCALE_CACHE): first the shared artifacts' fingerprints (`divscale grid --fingerprint`: code keys, MiniLM
# embeddings, RM heads, SmolLM2 generations, rankings, initial policy, eval key), then the grid itself. Both
# clones must agree on every fingerprint and on every column of the grid's runs.csv (run ids, keys, diversity,
# rewards) but the timings. On success the clones are removed; on a difference they are kept for inspection.
#
# Environment: PYTHON, TORCH_SPEC and LOCAL_DATA (an absolute path) go to `make setup`; VERIFY_ENV_GRID=0 compares
# the fingerprints only. Minutes of pip and CPU per clone, so it is not part of `make test`.
set -euo pipefail
recipe=${1:-smoke}
root=$(git rev-parse --show-toplevel)
commit=$(git -C "$root" rev-parse HEAD)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/divscale-verify-env-XXXXXX")
git -C "$root" diff --quiet HEAD || echo "verify-env: uncommitted changes are not in the clones (they check out $commit)"
echo "verify-env: $recipe from two clones of $commit in $tmp"

for c in a b; do
  git clone -q --no-checkout "$root" "$tmp/$c"
  git -C "$tmp/$c" checkout -q --detach "$commit"
  start=$SECONDS
  if ! make -C "$tmp/$c" setup PYTHON="${PYTHON:-python3}" TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}" \
       LOCAL_DATA="${LOCAL_DATA:-$root/data}" > "$tmp/$c-setup.log" 2>&1; then
    tail -30 "$tmp/$c-setup.log" >&2
    echo "verify-env: make setup failed in clone $c (log: $tmp/$c-setup.log)" >&2
    exit 1
  fi
  echo "clone $c: make setup from the lock in $((SECONDS - start)) s"
  export DIVSCALE_CACHE="$tmp/$c-cache"
  start=$SECONDS
  (cd "$tmp/$c" && .venv/bin/python -m divscale.cli grid --recipe "$recipe" --fingerprint \
     --runs-dir "$tmp/$c-fingerprint-runs" > "$tmp/$c-fingerprint.json" 2> "$tmp/$c-fingerprint.log") ||
    { tail -30 "$tmp/$c-fingerprint.log" >&2; exit 1; }
  echo "clone $c: fingerprints from an empty cache in $((SECONDS - start)) s"
  if [ "${VERIFY_ENV_GRID:-1}" != 0 ]; then
    start=$SECONDS
    (cd "$tmp/$c" && .venv/bin/python -m divscale.cli grid --recipe "$recipe" -j 1 > "$tmp/$c-grid.log" 2>&1) ||
      { tail -30 "$tmp/$c-grid.log" >&2; exit 1; }
    echo "clone $c: $recipe grid in $((SECONDS - start)) s"
  fi
done

status=0
"$tmp/a/.venv/bin/python" - "$tmp" "$recipe" <<'EOF' || status=$?
import csv
import json
import sys
from pathlib import Path

from divscale.provenance import environment

tmp, recipe = Path(sys.argv[1]), sys.argv[2]
status = 0
fp = {c: json.loads((tmp / f"{c}-fingerprint.json").read_text()) for c in "ab"}
differ = sorted(k for k in fp["a"].keys() | fp["b"].keys() if fp["a"].get(k) != fp["b"].get(k))
print(json.dumps(fp["a"], indent=2))
if differ:
    status = 1
    for k in differ:
        print(f"fingerprint {k}: clone a {fp['a'].get(k)} != clone b {fp['b'].get(k)}", file=sys.stderr)
else:
    print(f"fingerprints: the two clones agree on all {len(fp['a'])} entries")
grid = {c: tmp / c / "results" / recipe / "runs.csv" for c in "ab"}
if all(p.exists() for p in grid.values()):
    timing = {"created", "train_seconds", "eval_seconds", "cell_seconds"}
    rows = {c: [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(p.open())]
            for c, p in grid.items()}
    rows = {c: sorted(r, key=lambda r: r["run_id"]) for c, r in rows.items()}
    if rows["a"] == rows["b"]:
        print(f"grid: the two clones agree on all {len(rows['a'])} runs of {recipe}, every column but "
              f"{sorted(timing)} (run ids, keys, rewards):")
        for r in rows["a"]:
            print(f"  {r['run_id']}  reward_global {r['reward_global']}  d {r['d']}  {r['key_code_train']}")
    else:
        status = 1
        for ra, rb in zip(rows["a"], rows["b"]):
            diff = {k: (ra.get(k), rb.get(k)) for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k)}
            if diff:
                print(f"grid row {ra.get('run_id')}: {diff}", file=sys.stderr)
        if len(rows["a"]) != len(rows["b"]):
            print(f"grid: {len(rows['a'])} runs in clone a, {len(rows['b'])} in clone b", file=sys.stderr)
env = environment(tmp / "a" / "requirements" / "lock.txt")
print("environment:", json.dumps(env))
sys.exit(status)
EOF
if [ "$status" = 0 ]; then
  rm -rf "$tmp"
  echo "verify-env: the lock rebuilds the same $recipe artifacts and runs on this machine"
else
  echo "verify-env: the clones differ (above); kept in $tmp" >&2
fi
exit "$status"
