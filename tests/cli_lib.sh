# Helpers of the command-line tests (sourced by cli_gpt.sh and cli_ddp.sh):
#   run CMD ARGS...          -> $rc, stdout in $tmp/out, stderr in $tmp/err
#   expect_error WHAT STR... -> a failure unless rc != 0 and stderr holds every STR
#   fail MESSAGE; show; finish NAME (prints the verdict and exits 1 on any failure)
#   corpus=$(test_corpus)    -> $TINYSHAKESPEARE if it exists, else a small synthetic text
#   losses FILE              -> the "step loss" pairs of a --metrics file
#   worst_loss_diff A B N    -> the largest relative difference of the losses of two metrics files
#                               over the steps they share ("missing" unless they share N)
#   use_mpirun               -> exits 77 (skipped) without mpirun; else "${mpi[@]}" -np N CMD runs
#                               CMD under it with the settings this machine needs
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

# Neither corpus has a '~' (cli_gpt.sh uses one for a bad prompt); both have every letter of
# "The" (its prompt).
test_corpus() {
  if [ -n "${TINYSHAKESPEARE:-}" ] && [ -f "$TINYSHAKESPEARE" ]; then
    echo "$TINYSHAKESPEARE"
    return
  fi
  for i in $(seq 1 300); do
    echo "First Citizen: we are accounted poor citizens, the patricians good $i."
    echo "All: speak, speak. Resolved, resolved; we know it, we know it!"
    echo "The people shall have it."
  done >"$tmp/corpus.txt"
  echo "$tmp/corpus.txt"
}

losses() {
  sed -n 's/.*"step": *\([0-9]*\).*"loss": *\([-0-9.e]*\).*/\1 \2/p' "$1"
}

worst_loss_diff() {
  awk -v n="$3" 'NR == FNR { a[$1] = $2; next }
    ($1 in a) { d = (a[$1] - $2) / a[$1]; if (d < 0) d = -d; if (d > w) w = d; k++ }
    END { if (k != n) print "missing"; else print w + 0 }' <(losses "$1") <(losses "$2")
}

use_mpirun() {
  if ! command -v mpirun >/dev/null 2>&1; then
    echo "SKIPPED: mpirun not found (Debian: apt-get install openmpi-bin)"
    exit 77
  fi
  export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_btl=self,vader
  mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
}
