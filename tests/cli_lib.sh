# Helpers of the command-line tests (sourced by cli_gpt.sh and cli_ddp.sh):
#   run CMD ARGS...          -> $rc, stdout in $tmp/out, stderr in $tmp/err
#   expect_error WHAT STR... -> a failure unless rc != 0 and stderr holds every STR
#   fail MESSAGE; show; finish NAME (prints the verdict and exits 1 on any failure)
# $tmp is a fresh directory, removed at exit with any background job left in $bg_pid.
tmp=$(mktemp -d)
bg_pid=
trap '[ -n "$bg_pid" ] && kill "$bg_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
failures=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

run() {
  "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
}

show() {
  echo "  stdout: $(head -c 800 "$tmp/out")"
  echo "  stderr: $(head -c 800 "$tmp/err")"
}

expect_error() {
  local what=$1
  shift
  if [ "$rc" -eq 0 ]; then
    fail "$what exited 0"
    show
    return
  fi
  for s in "$@"; do
    grep -qF -- "$s" "$tmp/err" || { fail "$what: stderr does not contain '$s'"; show; }
  done
}

finish() {
  if [ "$failures" -eq 0 ]; then
    echo "$1: all checks passed"
    exit 0
  fi
  echo "$1: $failures check(s) failed"
  exit 1
}
