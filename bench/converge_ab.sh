#!/usr/bin/env bash
# A warm converge of the lab (site.yml less verify, on converged lab hosts), the roles of REV
# against this checkout's, alternated: both with this checkout's src/ and pyproject.toml (copied, so
# the wheel is the same and nothing restarts), each run's time and its hosts' changed count.
# Needs the lab hosts (`make lab-hosts`) converged by this checkout first.
#   bench/converge_ab.sh REV [RUNS]     (default 3 each)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1 runs=${2:-3}
old=$(mktemp -d)
trap 'git worktree remove --force "$old" >/dev/null 2>&1 || true' EXIT
git worktree add --detach -q "$old" "$rev"
rm -rf "$old/src" && cp -a src "$old/src" && cp -a pyproject.toml "$old/" && ln -s "$PWD/.venv" "$old/.venv" && ln -s "$PWD/.lab" "$old/.lab"
converge() {  # DIR: seconds and changed tasks of one converge from that checkout
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$(cd "$1" && ANSIBLE_CONFIG=$1/ansible.cfg .venv/bin/ansible-playbook site.yml --skip-tags verify 2>&1) || {
    echo "$out" | tail -30 >&2; exit 1; }
  t1=$(date +%s.%N)
  printf '%.1f %s\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$out" | grep -oE 'changed=[0-9]+' | cut -d= -f2 | paste -sd+ | bc)"
}
printf '%-4s %-10s %8s %8s\n' run roles seconds changed
for i in $(seq "$runs"); do
  for side in "$rev" HEAD; do
    dir=$([ "$side" = HEAD ] && echo "$PWD" || echo "$old")
    read -r seconds changed < <(converge "$dir")
    printf '%-4s %-10s %8s %8s\n' "$i" "${side:0:10}" "$seconds" "$changed"
  done
done
