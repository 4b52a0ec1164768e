#!/usr/bin/env bash
# Drives every subcommand of the savepoint CLI as a process, on real checkpoints written by the
# train_resume example: output and exit codes (0 ok, 1 problem, 2 usage). Fails on the first
# unexpected result.
set -euo pipefail
cli=$1 trainer=$2 work=$3 fixture=${4:?usage: cli_test.sh CLI TRAINER WORK SCRUB_FIXTURE}
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*"; exit 1; }
# expect <rc> <command...>: runs it, stdout to $work/out, stderr to $work/err, checks the exit code.
expect() {
  local want=$1 rc=0
  shift
  "$@" > "$work/out" 2> "$work/err" || rc=$?
  [ "$rc" -eq "$want" ] || { cat "$work/out" "$work/err"; fail "'$*' exits $rc, not $want"; }
}
# has_line <exact line> [file]
has_line() {
  local file=$work/${2:-out}
  grep -qxF -- "$1" "$file" || { cat "$file"; fail "no line '$1' in $file"; }
}
has() {
  local file=$work/${2:-out}
  grep -qE -- "$1" "$file" || { cat "$file"; fail "no line matching '$1' in $file"; }
}

# Deterministic: 3 epochs, retention keeps the latest 2 (and the best 2) end-of-epoch checkpoints.
"$trainer" "$work/ckpts" --epochs 3 >/dev/null
d=$work/ckpts

# --- list
expect 0 "$cli" list "$d"
cp "$work/out" "$work/list.txt"
has '^checkpoint +time +end-of-epoch +seq +size +pinned +status +meta$'
has '^CKPT\+[^ ]+ +[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} +(yes|no) +[0-9]+ +[0-9.]+ (B|KiB) +no +ok +\{.*"val_loss"'
n=$(grep -c '^CKPT+' "$work/list.txt")
[ "$n" -ge 2 ] || fail "list shows fewer than 2 checkpoints"
names=$(grep '^CKPT+' "$work/list.txt" | cut -d' ' -f1)
oldest=$(echo "$names" | head -1) newest=$(echo "$names" | tail -1)
expect 0 "$cli" list "$d" --json
[ "$(grep -c '"name": "CKPT+' "$work/out")" -eq "$n" ] || fail "list --json has not $n checkpoints"
has '"end_of_epoch": (true|false)'
has '"sequence": [0-9]+'

# --- show: meta, files, and each tensor from the safetensors headers (Mlp: fc1 = Linear(8, 32)).
expect 0 "$cli" show "$d" "$oldest"
cp "$work/out" "$work/show.txt"
has '^sequence +[0-9]+$'
has '^meta +\{.*"val_loss"'
has 'model\.safetensors'
has '^ +fc1\.weight +F32 +\[32, 8\] +1024 bytes$'
has '^ +fc2\.bias +F32 +\[1\] +4 bytes$'
has '^ +state\.0\.exp_avg +F32 +\[32, 8\]'
expect 0 "$cli" show "$d/$oldest"  # the checkpoint's own directory
cmp -s "$work/out" "$work/show.txt" || fail "show DIR NAME and show DIR/NAME differ"
expect 0 "$cli" show "$d" "$oldest" --json
has '"name": "fc1.weight"'
has '"dtype": "F32"'
expect 1 "$cli" show "$d" CKPT+nonesuch
has "no committed checkpoint named 'CKPT\+nonesuch'" err

# --- verify: everything intact
expect 0 "$cli" verify "$d"
[ "$(grep -c ' ok$' "$work/out")" -eq "$n" ] || fail "verify does not say ok for each checkpoint"
[ ! -s "$work/err" ] || fail "verify wrote to stderr that is not a terminal (progress belongs on terminals only)"
expect 0 "$cli" verify "$d" --json
has '"ok": true'
expect 0 "$cli" verify "$d/$oldest/"  # a checkpoint directory, trailing slash and all
[ "$(grep -c ' ok$' "$work/out")" -eq 1 ] || fail "verify of one checkpoint checks more than one"
# On a terminal the progress line appears (script gives the command a pseudo-terminal).
if command -v script >/dev/null; then
  script -qec "\"$cli\" verify \"$d\"" /dev/null > "$work/tty.txt" || fail "verify on a terminal"
  grep -q 'verifying 1/' "$work/tty.txt" || fail "no progress line on a terminal"
fi

# --- scrub: every distinct file once; nothing shared here (train_resume is not incremental)
expect 0 "$cli" scrub "$d"
has "^scrubbed ([0-9]+) of \\1 distinct files \\(.* 100%\\) in $n checkpoints: 0 damaged$"
[ ! -s "$work/err" ] || fail "scrub wrote to stderr that is not a terminal"

# --- diff: the oldest and newest differ in weights and meta; a checkpoint equals itself.
expect 0 "$cli" diff "$d/$oldest" "$d/$newest"
has '^  ~ val_loss: '
has '^key model: different$'
has '^  ~ fc1\.weight +F32 \[32, 8\]  max abs diff [0-9.e-]+$'
has '^key scheduler: '
has '^  ~ metadata savepoint /state/0/fields/step: [0-9]+ -> [0-9]+$'  # the optimizer's options and state
has '^  ~ /current: [0-9]+ -> [0-9]+$'                                # epochs.json, leaf by leaf
has 'the checkpoints differ$'
expect 1 "$cli" diff "$d/$oldest" "$d/$newest" --exit-code
expect 0 "$cli" diff "$d/$oldest" "$d/$oldest" --exit-code
has '^key model: equal$'
has '^  = fc1\.weight +F32 \[32, 8\]  equal$'
has '^same keys, tensors and user meta$'
expect 0 "$cli" diff "$d/$oldest" "$d/$newest" --json
has '"status": "different"'
has '"max_abs_diff": [0-9]'

# --- export: the model's file, byte for byte (it is already safetensors), written atomically.
expect 0 "$cli" export "$d/$oldest" model --to "$work/model.safetensors"
cmp "$work/model.safetensors" "$d/$oldest/model.safetensors" || fail "export is not the model's file"
expect 1 "$cli" export "$d/$oldest" model --to "$work/model.safetensors"
has 'already exists; pass --force' err
expect 0 "$cli" export "$d/$newest" model --to "$work/model.safetensors" --force
cmp -s "$work/model.safetensors" "$d/$newest/model.safetensors" || fail "export --force did not replace the file"
expect 1 "$cli" export "$d/$oldest" nokey --to "$work/x.safetensors"
has "has no key 'nokey'" err
expect 1 "$cli" export "$d/$oldest" epochs --to "$work/x.safetensors"
has 'not as tensors' err
expect 1 "$cli" export "$d/$oldest" epochs --to "$work/x.pt" --format pt
[ ! -e "$work/x.safetensors" ] && [ ! -e "$work/x.pt" ] || fail "a failed export left a file"
ls "$work" | grep -q 'savepoint-export' && fail "export left a temporary file"
# A PyTorch file: a zip archive; with Debian's python3-torch, torch.load returns the same
# tensors bit for bit (read back through the repository's own safetensors reader).
expect 0 "$cli" export "$d/$newest" model --to "$work/model.pt" --format pt
has_line "exported key 'model' of $newest to $work/model.pt ($(stat -c %s "$work/model.pt") bytes, pt)"
[ "$(head -c 2 "$work/model.pt")" = "PK" ] || fail "export --format pt did not write a zip archive"
expect 1 "$cli" export "$d/$newest" model --to "$work/model.pt" --format pt
has 'already exists' err
py=/usr/bin/python3
if [ -x "$py" ] && "$py" -c 'import torch, numpy' 2>/dev/null; then have_torch=1; else have_torch=; fi
# same_tensors <pt file> <safetensors files...>: each tensor of the .pt equals the mean of the
# safetensors files' floating tensors (the newest's for integers), exactly as rounded back.
same_tensors() {
  PYTHONPATH="$(dirname "$0")/../python" "$py" - "$@" <<'PY' || fail "python: the .pt file does not hold the expected tensors"
import sys, torch
from savepoint import safetensors as st
pt, files = sys.argv[1], sys.argv[2:]
loaded = torch.load(pt)
assert isinstance(loaded, dict), type(loaded)
sources = []
for f in files:
    data = open(f, "rb").read()
    h = st.parse(data, f)
    sources.append({i.name: st.to_torch(data, h, i) for i in h.tensors})
assert set(loaded) == set(sources[0]), (sorted(loaded), sorted(sources[0]))
for name, t in loaded.items():
    ts = [s[name] for s in sources]
    if ts[0].is_floating_point():
        want = (sum(x.to(torch.float64) for x in ts) / len(ts)).to(ts[0].dtype)
    else:
        want = ts[-1]
    assert t.dtype == want.dtype and torch.equal(t, want), name
print("python: %d tensors equal" % len(loaded))
PY
}
if [ -n "$have_torch" ]; then same_tensors "$work/model.pt" "$d/$newest/model.safetensors"; fi

# --- average: the last N or the best N by a meta key, to safetensors or pt.
expect 0 "$cli" average "$d" model --last 2 --to "$work/avg.safetensors"
has "averaged key 'model' over 2 checkpoint\(s\)"
last2=$(echo "$names" | tail -2)
older=$(echo "$last2" | head -1)
expect 0 "$cli" average "$d" model --last 2 --to "$work/avg.pt" --format pt --json
has '"format": "pt"'
if [ -n "$have_torch" ]; then
  same_tensors "$work/avg.pt" "$d/$older/model.safetensors" "$d/$newest/model.safetensors"
fi
expect 0 "$cli" average "$d" model --best 1 --min-key val_loss --to "$work/best.safetensors"
expect 1 "$cli" average "$d" model --last 2 --to "$work/avg.safetensors"
has 'already exists' err
expect 0 "$cli" average "$d" model --last 2 --to "$work/avg.safetensors" --force
expect 1 "$cli" average "$d" nokey --last 2 --to "$work/none.safetensors"
expect 1 "$cli" average "$work/no-such-dir" model --last 2 --to "$work/none.safetensors"
[ ! -e "$work/none.safetensors" ] || fail "a failed average left a file"
expect 2 "$cli" average "$d" model --to "$work/none.safetensors"
expect 2 "$cli" average "$d" model --best 2 --to "$work/none.safetensors"
expect 2 "$cli" average "$d" model --last 0 --to "$work/none.safetensors"
expect 2 "$cli" average "$d" model --last 2 --best 2 --min-key val_loss --to "$work/none.safetensors"
expect 0 "$cli" average --help
ls "$work" | grep -q 'savepoint-average' && fail "average left a temporary file"

# --- damage: one byte of a tensor file. verify and diff must say so; export must refuse.
f="$d/$oldest/model.safetensors"
printf '\x55' | dd of="$f" bs=1 seek=$(( $(stat -c %s "$f") - 1 )) conv=notrunc status=none
expect 1 "$cli" verify "$d"
has_line "$oldest DAMAGED"
has "^  problem: .*model\.safetensors' \(key 'model'\) fails its checksum"
has "1 with problems$"
expect 1 "$cli" verify "$d" --json
has '"ok": false'
expect 1 "$cli" diff "$d/$oldest" "$d/$newest"
has "key 'model'.*fails its checksum" err
expect 1 "$cli" export "$d/$oldest" model --to "$work/damaged.safetensors"
has 'fails its checksum' err
[ ! -e "$work/damaged.safetensors" ] || fail "export wrote a damaged file"
expect 1 "$cli" scrub "$d"
has "^DAMAGED model\\.safetensors: .*fails its checksum.*; held by 1 checkpoint\\(s\\): ${oldest//+/\\+}$"
has ' 1 damaged$'
# Damaged headers: show names each file's problem on a line of its own and goes on.
f="$d/$oldest/optimizer.safetensors"
printf 'X' | dd of="$f" bs=1 seek=8 conv=notrunc status=none                      # JSON broken
f="$d/$oldest/sampler.safetensors"
printf '\xff\xff\xff\xff\xff\xff\xff\x7f' | dd of="$f" bs=1 conv=notrunc status=none  # huge length
expect 0 "$cli" show "$d" "$oldest"
has 'UNREADABLE tensors: .*optimizer.safetensors.*does not start with'
has 'UNREADABLE tensors: .*sampler.safetensors.*cap'
has '^ +fc1\.weight +F32'
# A damaged meta.json: the checkpoint is not listed as committed but reported, and verify fails.
cp -r "$d/$newest" "$d/CKPT+broken"
sed -i 's/"sequence": [0-9]*/"sequence": 999/' "$d/CKPT+broken/meta.json"
expect 0 "$cli" list "$d"
has '^CKPT\+broken +- +- +- +- +- +UNREADABLE .*checksum mismatch'
expect 1 "$cli" verify "$d/CKPT+broken"
has '^CKPT\+broken UNREADABLE$'
expect 1 "$cli" scrub "$d"
has '^UNREADABLE CKPT\+broken: .*checksum mismatch'
has ', 1 unreadable$'
rm -rf "$d/CKPT+broken"

# --- pin, prune: pin the newest; the dry run prints exactly what prune then deletes.
expect 0 "$cli" pin "$d" "$newest"
has_line "$newest pinned"
expect 0 "$cli" list "$d"
grep -F "$newest " "$work/out" | grep -qE ' yes +ok ' || fail "list does not show the pin"
expect 0 "$cli" prune "$d" --keep 0 --dry-run
sed 's/^would delete/deleted/; s/would be deleted$/deleted/' "$work/out" > "$work/planned.txt"
has "^$((n - 1)) checkpoint\(s\) would be deleted$"
[ "$(grep -c '^CKPT+' <("$cli" list "$d"))" -eq "$n" ] || fail "the dry run deleted"
expect 0 "$cli" prune "$d" --keep 0
diff "$work/planned.txt" "$work/out" || fail "prune deleted something else than its dry run printed"
[ "$(grep -c '^CKPT+' <("$cli" list "$d"))" -eq 1 ] || fail "prune --keep 0 did not keep only the pinned one"
expect 0 "$cli" unpin "$d/$newest"
has_line "$newest unpinned"
expect 0 "$cli" prune "$d" --keep 0 --json
has '"deleted": \['
[ "$(grep -c '^CKPT+' <("$cli" list "$d") || true)" -eq 0 ] || fail "prune --keep 0 left checkpoints"

# --- usage: help exits 0 on stdout; bad arguments exit 2 with a message on stderr.
for h in --help -h; do
  expect 0 "$cli" $h
  has '^(Subcommands|SUBCOMMANDS):'  # CLI11 2.3 (Debian 12) | 2.4 (Debian 13 on)
done
for sub in list show verify scrub prune pin unpin diff export; do
  expect 0 "$cli" "$sub" --help
  has "^(Usage: )?savepoint $sub "  # CLI11 2.4 drops "Usage: "
done
expect 2 "$cli"
expect 2 "$cli" bogus "$d"
expect 2 "$cli" list "$d" --bogus
has 'not expected: --bogus' err
expect 2 "$cli" list
expect 2 "$cli" prune "$d"
has 'keep is required' err
expect 2 "$cli" prune "$d" --keep -1
expect 2 "$cli" prune "$d" --keep many
expect 2 "$cli" diff "$d/x"
expect 2 "$cli" export "$d/x" model
expect 2 "$cli" export "$d/x" model --to f --format zip

# --- a directory that does not exist is an error (exit 1), never an empty table, never created.
missing="$work/no/such/dir"
for args in "list $missing" "verify $missing" "scrub $missing" "show $missing CKPT+x" "pin $missing CKPT+x" "prune $missing --keep 1" \
            "diff $missing/CKPT+a $missing/CKPT+b" "export $missing/CKPT+a model --to $work/x"; do
  # shellcheck disable=SC2086
  expect 1 "$cli" $args
  has "no such directory: $missing" err
  [ ! -s "$work/out" ] || fail "'$args' printed output for a missing directory"
done
[ ! -e "$work/no" ] || fail "a command created the missing directory"
# --- incremental checkpoints (format 2): keys in parts, read whole by show, verify, diff, export.
"$trainer" "$work/inc" --epochs 2 --incremental 256 >/dev/null
inc=$work/inc
expect 0 "$cli" list "$inc"
first=$(grep -o '^CKPT+[^ ]*' "$work/out" | head -1)
last=$(grep -o '^CKPT+[^ ]*' "$work/out" | tail -1)
[ "$first" != "$last" ] || fail "the incremental run left fewer than 2 checkpoints"
expect 0 "$cli" show "$inc" "$last" --json
python3 - "$work/out" <<'PY' || fail "show --json of an incremental checkpoint lacks parts"
import json, sys
files = json.load(open(sys.argv[1]))["files"]
parts = [f for f in files if f["key"] == "model"]
assert len(parts) > 1 and [f["part"] for f in parts] == list(range(len(parts))), parts
assert all(f["file"] == "model.part%05d.safetensors" % f["part"] for f in parts), parts
PY
expect 0 "$cli" verify "$inc"
expect 0 "$cli" diff "$inc/$first" "$inc/$last" --json
python3 - "$work/out" <<'PY' || fail "diff does not compare the model once, whole"
import json, sys
keys = [k for k in json.load(open(sys.argv[1]))["keys"] if k["key"] == "model"]
assert len(keys) == 1 and keys[0]["status"] != "equal", keys
PY
expect 0 "$cli" export "$inc/$last" model --to "$work/inc_model.safetensors"
expect 0 "$cli" show "$inc" "$last"
has '^  model +model.part00000.safetensors '

# --- scrub on incremental checkpoints that share parts: one damaged inode, every checkpoint named.
"$fixture" "$work/shared" 5 >/dev/null
sh=$work/shared
expect 0 "$cli" scrub "$sh" --json
python3 -c 'import json, sys; r = json.load(sys.stdin); assert r["clean"] and r["checkpoints"] == 5 and r["files_read"] == r["files"] and r["bytes_read"] == r["bytes"], r' \
  < "$work/out" || fail "scrub --json of an intact root"
records=$(find "$sh" -name '*.part*.safetensors' | wc -l)
[ "$(python3 -c 'import json, sys; print(json.load(sys.stdin)["files"])' < "$work/out")" -lt "$records" ] ||
  fail "scrub counts shared files more than once"
# The part held by the most checkpoints, and who holds it (by inode).
shared_file=$(find "$sh" -name 'frozen.part*.safetensors' -links +1 -printf '%n %p\n' | sort -rn | head -1 | cut -d' ' -f2)
[ -n "$shared_file" ] || fail "the fixture wrote no shared part"
holders=$(find "$sh" -inum "$(stat -c %i "$shared_file")" -printf '%h\n' | xargs -n1 basename | sort)
[ "$(echo "$holders" | wc -l)" -ge 2 ] || fail "the shared part has fewer than 2 holders"
python3 -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(-1, 2); b = f.read(1)[0]; f.seek(-1, 2); f.write(bytes([b ^ 1]))' \
  "$shared_file"  # in place: the same inode
expect 1 "$cli" scrub "$sh"
[ "$(grep -c '^DAMAGED ' "$work/out")" -eq 1 ] || fail "scrub reports the shared file more than once"
has "^DAMAGED $(basename "$shared_file"): .*fails its checksum.*; held by $(echo "$holders" | wc -l) checkpoint\\(s\\): "
named=$(sed -n 's/^DAMAGED .*; held by [0-9]* checkpoint(s): //p' "$work/out" | tr ',' '\n' | tr -d ' ' | sort)
[ "$named" = "$holders" ] || fail "scrub names '$named', not every checkpoint holding the file: '$holders'"
has ' in 5 checkpoints: 1 damaged$'
expect 1 "$cli" scrub "$sh" --json
python3 -c 'import json, sys; json.load(sys.stdin)' < "$work/out" || fail "scrub --json is not JSON"
python3 - "$work/out" "$holders" <<'PY' || fail "scrub --json does not name the damaged file's checkpoints"
import json, sys
r = json.load(open(sys.argv[1]))
assert not r["clean"] and len(r["damaged"]) == 1, r
assert sorted(r["damaged"][0]["checkpoints"]) == sys.argv[2].split(), r
PY
# A subset reads less; a damaged file it finds is named with every holder all the same.
rc=0
"$cli" scrub "$sh" --subset 30 --seed 1 > "$work/out" 2> "$work/err" || rc=$?
[ "$rc" -le 1 ] || fail "scrub --subset 30 exits $rc"
has '^scrubbed [0-9]+ of [0-9]+ distinct files'
if [ "$rc" -eq 1 ]; then
  named=$(sed -n 's/^DAMAGED .*; held by [0-9]* checkpoint(s): //p' "$work/out" | tr ',' '\n' | tr -d ' ' | sort)
  [ "$named" = "$holders" ] || fail "scrub --subset names fewer checkpoints"
fi
if command -v script >/dev/null; then
  script -qec "\"$cli\" scrub \"$sh\"" /dev/null > "$work/tty.txt" || true
  grep -q 'scrubbing ' "$work/tty.txt" || fail "scrub draws no progress line on a terminal"
fi
for bad in abc -1 100.5 0; do
  expect 2 "$cli" scrub "$sh" --subset "$bad"
  has 'subset' err
done
has 'in \(0, 100\]' err
expect 2 "$cli" scrub "$(dirname "$shared_file")"  # a checkpoint, not a root
has 'is a checkpoint, not a root' err
# The next save does not link the damaged file: it writes that part again, and the new
# checkpoint verifies (the older ones keep their damage: nothing shared is changed).
"$fixture" "$sh" 1 >/dev/null 2>"$work/err"
grep -q "$(basename "$shared_file")' does not match its record" "$work/err" || fail "the save did not say it rewrote the damaged part"
expect 0 "$cli" list "$sh"
newest=$(grep -o '^CKPT+[^ ]*' "$work/out" | tail -1)
[ "$(stat -c %i "$sh/$newest/$(basename "$shared_file")")" != "$(stat -c %i "$shared_file")" ] ||
  fail "the next save linked the damaged part"
expect 0 "$cli" verify "$sh" "$newest"
expect 1 "$cli" verify "$(dirname "$shared_file")"
# --- torch.distributed.checkpoint directories (Python 2.6's dcp.save: tests/dcp/fixtures)
dcpdir=$(cd "$(dirname "$0")" && pwd)/dcp/fixtures/torch26/dcp
expect 0 "$cli" show "$dcpdir"
has '^format +torch.distributed.checkpoint$'
has '^  model.fc1.weight +F32 +\[16, 8\] +512 bytes +4 chunk\(s\)$'
has '^  step +value +2$'
expect 0 "$cli" show "$dcpdir" --json
has '"format": "torch.distributed.checkpoint"'
expect 0 "$cli" verify "$dcpdir"
has_line "$dcpdir ok"
expect 0 "$cli" export "$dcpdir" model --to "$work/dcp-model.safetensors"
has '^exported 5 tensor\(s\) of DCP checkpoint'
# DCP -> savepoint -> DCP: the same bytes, every chunk verified.
expect 0 "$cli" convert "$dcpdir" --to "$work/converted"
has 'keys model, optim, dcp_values$'
converted=$(ls "$work/converted" | grep '^CKPT+')
expect 0 "$cli" show "$work/converted/$converted"
has '^  model +model.safetensors +torch.nn.Module '
expect 0 "$cli" convert "$work/converted/$converted" --to "$work/back"
expect 0 "$cli" verify "$work/back"
expect 0 "$cli" export "$work/back" model --to "$work/back-model.safetensors"
cmp "$work/dcp-model.safetensors" "$work/back-model.safetensors" || fail "the model changed in DCP -> savepoint -> DCP"
expect 1 "$cli" convert "$work/converted/$converted" --to "$work/back"
has 'already holds a DCP checkpoint' err
# A damaged chunk: verify names the file and key, exit 1.
cp -r "$dcpdir" "$work/dcp-cut"
truncate -s 5000 "$work/dcp-cut/__2_0.distcp"
expect 1 "$cli" verify "$work/dcp-cut"
has '__2_0.distcp' && has "key '"
echo "cli: all checks passed"
