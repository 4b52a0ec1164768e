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
"$cli" verify "$work/ckpts"
# Damage one byte of a tensor file: verify must notice and exit 1.
f="$work/ckpts/$name/model.safetensors"
printf '\x55' | dd of="$f" bs=1 seek=$(( $(stat -c %s "$f") - 1 )) conv=notrunc status=none
if "$cli" verify "$work/ckpts" > "$work/verify.txt"; then echo "FAIL: verify missed the damage"; exit 1; fi
grep -q DAMAGED "$work/verify.txt" || { echo "FAIL: no DAMAGED line"; exit 1; }
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
if "$cli" bogus "$work/ckpts" 2>/dev/null; then echo "FAIL: unknown command accepted"; exit 1; fi
echo "cli: all checks passed"
