#!/usr/bin/env bash
# Runs a command against a local S3-compatible server started for it, then stops the server:
#   with-s3-server.sh <moto|s3rver> [--faults] [--timeout SECONDS] -- command args...
# The server listens on 127.0.0.1 at a free port, with one bucket ($SAVEPOINT_TEST_S3_BUCKET,
# default savepoint-test). The command runs under `timeout` (default 600 s) with:
#   AWS_ENDPOINT_URL=http://127.0.0.1:PORT   the server, or the fault proxy with --faults
#   SAVEPOINT_TEST_S3_DIRECT=http://...      the server itself (bypassing the proxy)
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY  testing/testing (s3rver: S3RVER/S3RVER, the only
#                                            key it knows), AWS_REGION=AWS_DEFAULT_REGION=us-east-1
#   SAVEPOINT_TEST_S3_BUCKET, SAVEPOINT_TEST_S3_SERVER (moto or s3rver)
#   with --faults: SAVEPOINT_TEST_FAULT_PLAN (a JSON file holding [], the plan that
#   tests/s3_fault_proxy.py re-reads at every request) and SAVEPOINT_TEST_FAULT_LOG (a line per
#   request that went through the proxy)
# AWS_PROFILE and the like are unset. Exits with the command's status (124: it ran past the
# timeout); 77 (ctest's SKIP_RETURN_CODE) with one line on stderr when the server is not
# installed; 1 when it does not start (its log shown). The servers are stopped whatever happens.
#   moto:   Debian's python3-moto (13 on) with python3-flask, -flask-cors and -werkzeug, run as
#           `python3 -m moto.server` ($SAVEPOINT_PYTHON, default /usr/bin/python3)
#   s3rver: from npm, installed once into ${SAVEPOINT_NPM_PREFIX:-$HOME/.cache/savepoint-npm}
set -euo pipefail
me=with-s3-server.sh
usage() { echo "usage: $me <moto|s3rver> [--faults] [--timeout SECONDS] -- command args..." >&2; exit 2; }
[ $# -gt 0 ] || usage
server=$1
shift
case $server in moto | s3rver) ;; *) usage ;; esac
faults="" limit=600
while [ $# -gt 0 ]; do
  case $1 in
    --faults) faults=1; shift ;;
    --timeout) [ $# -ge 2 ] || usage; limit=$2; shift 2 ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[ $# -gt 0 ] || usage
here=$(cd "$(dirname "$0")" && pwd)
py=${SAVEPOINT_PYTHON:-/usr/bin/python3}
bucket=${SAVEPOINT_TEST_S3_BUCKET:-savepoint-test}
s3rver_version=3.7.1
skip() { echo "$me: $server is not installed ($1): skipped" >&2; exit 77; }
[ -x "$py" ] || skip "no $py (Debian: python3)"

work=$(mktemp -d "${TMPDIR:-/tmp}/savepoint-s3.XXXXXX")
groups=()     # the process groups to stop: the server's and the proxy's
cmd_pid=""
alive() {     # alive <pid>: running (not a zombie)
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
# shellcheck disable=SC2317  # run by the traps below
cleanup() {
  local pid i
  for pid in "${groups[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${groups[@]}"; do
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
# shellcheck disable=SC2317
on_signal() {  # on_signal <signal> <exit status>: passed on to the command (timeout forwards it)
  trap '' INT TERM HUP  # a second signal (Ctrl-C twice, or sent to the group) must not cut cleanup short
  [ -z "$cmd_pid" ] || kill -"$1" "$cmd_pid" 2>/dev/null || true
  exit "$2"
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

# http <method> <url>: the status code of an unsigned request (0: no answer), no proxy in between.
http() {
  "$py" -c '
import sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[2], method=sys.argv[1], data=b"" if sys.argv[1] == "PUT" else None)
try:
    print(urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print(0)' "$@"
}
free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# start <name> <log> <command...>: in a process group of its own (stopped by cleanup).
start() {
  local log=$2
  shift 2
  setsid "$@" >>"$log" 2>&1 </dev/null &
  groups+=("$!")
}
fail_start() {  # fail_start <what> <log>
  echo "$me: $1; the last lines of its log:" >&2
  tail -n 50 "$2" >&2 || true
  exit 1
}
# wait_for <pid> <port> <log> <name>: until the port answers HTTP (30 s at most).
wait_for() {
  local deadline=$((SECONDS + 30))
  until [ "$(http GET "http://127.0.0.1:$2/")" != 0 ]; do
    alive "$1" || fail_start "$4 exited before it answered on 127.0.0.1:$2" "$3"
    [ $SECONDS -lt $deadline ] || fail_start "$4 did not answer on 127.0.0.1:$2 within 30 s" "$3"
    sleep 0.2
  done
}

log=$work/server.log
port=$(free_port)
case $server in
  moto)
    missing=$("$py" -c '
import importlib
missing = []
for module, package in (("moto.server", "python3-moto"), ("flask", "python3-flask"),
                        ("flask_cors", "python3-flask-cors"), ("werkzeug", "python3-werkzeug")):
    try:
        importlib.import_module(module)
    except Exception:
        missing.append(package)
print(" ".join(missing))')
    [ -z "$missing" ] || skip "$py lacks Debian's $missing"
    start moto "$log" "$py" -m moto.server -H 127.0.0.1 -p "$port"
    ;;
  s3rver)
    prefix=${SAVEPOINT_NPM_PREFIX:-$HOME/.cache/savepoint-npm}
    bin=$prefix/node_modules/.bin/s3rver
    command -v node >/dev/null || skip "no node (Debian: nodejs)"
    if [ ! -x "$bin" ]; then
      command -v npm >/dev/null || skip "not in $prefix, and no npm to install it (Debian: npm)"
      mkdir -p "$prefix"
      echo "$me: installing s3rver@$s3rver_version from npm into $prefix ..." >&2
      # One install at a time into the shared prefix.
      if ! (flock 9 && { [ -x "$bin" ] || timeout 300 npm install --prefix "$prefix" --no-audit --no-fund \
              --loglevel=error "s3rver@$s3rver_version"; }) 9>"$prefix/.lock" >"$work/npm.log" 2>&1 ||
         [ ! -x "$bin" ]; then
        why=$( (grep -m1 'Error: ' "$work/npm.log" || grep -m1 -E '^npm (error|ERR!)' "$work/npm.log" || echo "no output") |
               sed -E 's/^npm (error|ERR!) //')
        skip "npm install s3rver@$s3rver_version failed: $why"
      fi
    fi
    mkdir -p "$work/data"
    start s3rver "$log" "$bin" --directory "$work/data" --address 127.0.0.1 --port "$port" --silent \
      --configure-bucket "$bucket"
    ;;
esac
wait_for "${groups[0]}" "$port" "$log" "$server"
if [ "$server" = moto ]; then
  status=$(http PUT "http://127.0.0.1:$port/$bucket")
  [ "$status" = 200 ] || fail_start "moto answered $status to creating bucket $bucket" "$log"
fi
status=$(http HEAD "http://127.0.0.1:$port/$bucket")
[ "$status" = 200 ] || fail_start "$server answered $status to HEAD of bucket $bucket" "$log"
endpoint=http://127.0.0.1:$port
export SAVEPOINT_TEST_S3_DIRECT=$endpoint

if [ -n "$faults" ]; then
  export SAVEPOINT_TEST_FAULT_PLAN=$work/fault-plan.json SAVEPOINT_TEST_FAULT_LOG=$work/fault.log
  echo "[]" >"$SAVEPOINT_TEST_FAULT_PLAN"
  : >"$SAVEPOINT_TEST_FAULT_LOG"
  proxy_port=$(free_port)
  start proxy "$work/proxy.log" "$py" "$here/../tests/s3_fault_proxy.py" --port "$proxy_port" --upstream "127.0.0.1:$port"
  wait_for "${groups[1]}" "$proxy_port" "$work/proxy.log" "the fault proxy"
  : >"$SAVEPOINT_TEST_FAULT_LOG"  # without wait_for's requests
  endpoint=http://127.0.0.1:$proxy_port
fi

unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_ENDPOINT_URL_S3 AWS_CONFIG_FILE \
  AWS_SHARED_CREDENTIALS_FILE AWS_CA_BUNDLE
key=testing
[ "$server" = moto ] || key=S3RVER
export AWS_ENDPOINT_URL=$endpoint AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$key AWS_REGION=us-east-1 \
  AWS_DEFAULT_REGION=us-east-1 SAVEPOINT_TEST_S3_BUCKET=$bucket SAVEPOINT_TEST_S3_SERVER=$server \
  AWS_CONFIG_FILE=$work/no-aws-config AWS_SHARED_CREDENTIALS_FILE=$work/no-aws-credentials
export no_proxy=127.0.0.1,localhost${no_proxy:+,$no_proxy} NO_PROXY=127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}
echo "$me: $server on $SAVEPOINT_TEST_S3_DIRECT${faults:+ behind the fault proxy at $endpoint}, bucket $bucket" >&2

# In the background so that a signal reaches the trap at once (timeout forwards it to the
# command); stdin passed explicitly (a background job's would be /dev/null).
exec 3<&0
timeout --kill-after=10 "$limit" "$@" <&3 3<&- &
cmd_pid=$!
exec 3<&-
status=0
wait "$cmd_pid" || status=$?
cmd_pid=""
[ "$status" -ne 124 ] || echo "$me: the command ran past $limit s and was stopped" >&2
exit "$status"
