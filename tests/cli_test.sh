#!/usr/bin/env bash
# Drives the savepoint CLI on real checkpoints; fails on the first unexpected output.
set -euo pipefail
cli=$1 trainer=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
# Deterministic: 3 epochs, retention keeps the latest 2 (and the best 2) end-of-epoch checkpoints.
"$trainer" "$work/ckpts" --epochs 3 >/dev/null
"$cli" list "$work/ckpts" | tee "$work/list.txt"
[ "$(grep -c '^CKPT+' "$work/list.txt")" -ge 2 ] || { echo "FAIL: list shows fewer than 2 checkpoints"; exit 1; }
grep -q '"val_loss"' "$work/list.txt" || { echo "FAIL: list does not show the meta"; exit 1; }
name=$(grep '^CKPT+' "$work/list.txt" | head -1 | cut -d' ' -f1)
"$cli" show "$work/ckpts" "$name" | tee "$work/show.txt"
grep -q 'model.safetensors' "$work/show.txt" || { echo "FAIL: show does not list files"; exit 1; }
# The tensors of each .safetensors file, from its header: train_resume's Mlp has fc1 = Linear(8, 32).
grep -E '^ +fc1\.weight +F32 +\[32, 8\] +1024 bytes$' "$work/show.txt" >/dev/null ||
  { echo "FAIL: show does not list tensor fc1.weight as F32 [32, 8], 1024 bytes"; exit 1; }
grep -E '^ +fc2\.bias +F32 +\[1\] +4 bytes$' "$work/show.txt" >/dev/null ||
  { echo "FAIL: show does not list tensor fc2.bias as F32 [1]"; exit 1; }
grep -E '^ +state\.0\.exp_avg +F32 +\[32, 8\]' "$work/show.txt" >/dev/null ||
  { echo "FAIL: show does not list the optimizer's tensors"; exit 1; }
"$cli" verify "$work/ckpts"
# Damage one byte of a tensor file: verify must notice and exit 1.
f="$work/ckpts/$name/model.safetensors"
printf '\x55' | dd of="$f" bs=1 seek=$(( $(stat -c %s "$f") - 1 )) conv=notrunc status=none
if "$cli" verify "$work/ckpts" > "$work/verify.txt"; then echo "FAIL: verify missed the damage"; exit 1; fi
grep -q DAMAGED "$work/verify.txt" || { echo "FAIL: no DAMAGED line"; exit 1; }
# Damaged headers: show names the file's problem on a line of its own and goes on.
f="$work/ckpts/$name/optimizer.safetensors"
printf 'X' | dd of="$f" bs=1 seek=8 conv=notrunc status=none                      # JSON broken
f="$work/ckpts/$name/sampler.safetensors"
printf '\xff\xff\xff\xff\xff\xff\xff\x7f' | dd of="$f" bs=1 conv=notrunc status=none  # huge length
"$cli" show "$work/ckpts" "$name" > "$work/show-damaged.txt" || { echo "FAIL: show failed on damaged headers"; exit 1; }
grep -q 'UNREADABLE tensors: .*optimizer.safetensors.*does not start with' "$work/show-damaged.txt" ||
  { echo "FAIL: show does not report the broken optimizer header"; cat "$work/show-damaged.txt"; exit 1; }
grep -q 'UNREADABLE tensors: .*sampler.safetensors.*cap' "$work/show-damaged.txt" ||
  { echo "FAIL: show does not report the sampler header's length"; cat "$work/show-damaged.txt"; exit 1; }
grep -qE '^ +fc1\.weight +F32' "$work/show-damaged.txt" || { echo "FAIL: show stopped at a damaged file"; exit 1; }
before=$(grep -c '^CKPT+' "$work/list.txt")
# Pin the newest: prune --keep 0 must leave exactly it.
newest=$(grep '^CKPT+' "$work/list.txt" | tail -1 | cut -d' ' -f1)
"$cli" pin "$work/ckpts" "$newest" | grep -q "pinned" || { echo "FAIL: pin"; exit 1; }
"$cli" list "$work/ckpts" | grep "^$newest" | grep -q " yes " || { echo "FAIL: list does not show the pin"; exit 1; }
"$cli" prune "$work/ckpts" --keep 1 --dry-run | grep -q "would be deleted"
[ "$("$cli" list "$work/ckpts" | grep -c '^CKPT+')" -eq "$before" ] || { echo "FAIL: dry run deleted"; exit 1; }
"$cli" prune "$work/ckpts" --keep 0
[ "$("$cli" list "$work/ckpts" | grep -c '^CKPT+' || true)" -eq 1 ] || { echo "FAIL: prune --keep 0 did not keep only the pinned one"; exit 1; }
"$cli" unpin "$work/ckpts" "$newest" | grep -q "unpinned" || { echo "FAIL: unpin"; exit 1; }
"$cli" prune "$work/ckpts" --keep 0
[ "$("$cli" list "$work/ckpts" | grep -c '^CKPT+' || true)" -eq 0 ] || { echo "FAIL: prune --keep 0 left checkpoints"; exit 1; }
# Usage: --help and -h print it and succeed; an unknown command exits 2.
for h in --help -h; do
  "$cli" $h > "$work/help.txt" || { echo "FAIL: $h exits $?"; exit 1; }
  grep -q 'savepoint show' "$work/help.txt" || { echo "FAIL: $h does not print the usage on stdout"; exit 1; }
done
rc=0; "$cli" bogus "$work/ckpts" 2>/dev/null || rc=$?
[ "$rc" -eq 2 ] || { echo "FAIL: unknown command exits $rc, not 2"; exit 1; }
# A directory that does not exist is an error, not an empty table ("no checkpoints").
missing="$work/no/such/dir"
expect_missing_dir() {
  local rc=0
  "$cli" "$@" > "$work/nodir.txt" 2> "$work/nodir.err" || rc=$?
  [ "$rc" -eq 1 ] || { echo "FAIL: '$1' of a missing directory exits $rc, not 1"; exit 1; }
  grep -qF "no such directory: $missing" "$work/nodir.err" || { echo "FAIL: '$1': no clear message"; cat "$work/nodir.err"; exit 1; }
  [ ! -s "$work/nodir.txt" ] || { echo "FAIL: '$1' of a missing directory printed a table"; exit 1; }
}
expect_missing_dir list "$missing"
expect_missing_dir verify "$missing"
expect_missing_dir show "$missing" CKPT+x
expect_missing_dir pin "$missing" CKPT+x
expect_missing_dir prune "$missing" --keep 1
[ ! -e "$work/no" ] || { echo "FAIL: a command created the missing directory"; exit 1; }
echo "cli: all checks passed"
