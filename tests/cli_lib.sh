# Helpers of the command-line tests (sourced by cli_gpt.sh and cli_ddp.sh):
#   run CMD ARGS...          -> $rc, stdout in $tmp/out, stderr in $tmp/err
#   expect_error WHAT STR... -> a failure unless rc != 0 and stderr holds every STR
#   fail MESSAGE; show; finish NAME (prints the verdict and exits 1 on any failure)
#   corpus=$(test_corpus)    -> $TINYSHAKESPEARE if it exists, else a small synthetic text
#   losses FILE              -> the "step loss" pairs of a --metrics file, the loss as written
#                               ("null" where the step's loss was NaN or infinite)
#   compare_losses REF GOT N TOL -> prints the worst relative difference of GOT's losses from REF's
#                               at the same steps; status 0 only if GOT has exactly N steps, each
#                               once and each in REF, every loss a finite number, REF's positive,
#                               and every difference <= TOL (0: identical). Else prints why.
#   optional_missing WHAT    -> an optional input (torch, a dataset) is absent: prints SKIPPED,
#                               or fails under FORGE_REQUIRE_OPTIONAL=1 (CI installs them all)
#   use_mpirun               -> exits 77 (skipped; 1 under FORGE_REQUIRE_OPTIONAL=1) without
#                               mpirun; else "${mpi[@]}" -np N CMD runs CMD under it with the
#                               settings this machine needs
#   tiny_serve_model TEST    -> trains a tiny GPT into $tmp/tiny ($train: the train binary) and
#                               writes $tmp/chat.json, a chat template in the tiny corpus's
#                               characters; on a failed training run fails and finishes TEST
#   wait_exit PID SECONDS WHAT -> waits up to SECONDS for PID (a background job) to end; fails
#                               naming WHAT and kills it if it does not; $rc is its exit status
#   start_server NAME ARGS... -> runs $serve on $tmp/tiny on a free loopback port with ARGS;
#                               $port and $bg_pid; its stdout and stderr in $tmp/NAME.out, .err
#                               (fails and finishes $test_name when it does not start in 30 s)
#   stop_server NAME         -> SIGTERM, then a failure unless it exits 0 within 15 s
#   skip_missing WHAT        -> an optional input is missing: exits 77 (skipped), or fails and
#                               finishes $test_name under FORGE_REQUIRE_OPTIONAL=1
#   node_script SRC DIR      -> a copy of the Node script SRC in $tmp/DIR beside a link to
#                               $npm_dir/node_modules (ESM imports resolve from the script's own
#                               directory, not NODE_PATH); prints the copy's path
#   npm_package NAME MAJOR   -> NAME@MAJOR installed once into ${FORGE_NPM_CACHE:-~/.cache/
#                               forge-npm} (never the source tree): $npm_dir; status 1 (after
#                               printing why) without node >= 20 and npm, or when npm fails
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
  sed -n 's/.*"step": *\([0-9]*\).*"loss": *\([^,}]*\).*/\1 \2/p' "$1"
}

compare_losses() {
  awk -v n="$3" -v tol="$4" '
    function number(x) { return x ~ /^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/ }
    function why(s) { if (problems < 3) reasons = reasons "; " s; problems++ }
    NR == FNR { if ($1 in ref) why("reference step " $1 " twice"); ref[$1] = $2; next }
    {
      got++
      if ($1 in seen) { why("step " $1 " twice"); next }
      seen[$1] = 1
      if (!($1 in ref)) { why("step " $1 " not in the reference"); next }
      if (!number($2)) { why("step " $1 ": loss " $2); next }
      if (!number(ref[$1]) || ref[$1] <= 0) { why("reference step " $1 ": loss " ref[$1]); next }
      d = ($2 - ref[$1]) / ref[$1]
      if (d < 0) d = -d
      if (d > worst) worst = d
    }
    END {
      if (got != n) why(got + 0 " steps, expected " n)
      if (problems) { print "not comparable: " problems " problem(s)" reasons; exit 1 }
      printf "%.3g\n", worst
      exit !(worst <= tol)
    }' <(losses "$1") <(losses "$2")
}

optional_missing() {
  if [ "${FORGE_REQUIRE_OPTIONAL:-}" = 1 ]; then
    fail "FORGE_REQUIRE_OPTIONAL=1 and $*"
  else
    echo "SKIPPED: $*"
  fi
}

use_mpirun() {
  if ! command -v mpirun >/dev/null 2>&1; then
    optional_missing "mpirun not found (Debian: apt-get install openmpi-bin)"
    [ "$failures" -eq 0 ] && exit 77
    exit 1
  fi
  export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_btl=self,vader
  mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
}

wait_exit() {
  local pid=$1 seconds=$2 what=$3
  for _ in $(seq 1 $((seconds * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    fail "$what: still running $seconds s later; killed"
    kill -KILL "$pid"
  fi
  wait "$pid"
  rc=$?
}

tiny_serve_model() {
  local corpus
  corpus=$(test_corpus)
  echo "corpus: $corpus"
  run "$train" gpt --data "$corpus" --n-layer 1 --n-head 2 --n-embd 16 --block-size 16 \
    --batch-size 4 --eval-interval 10 --eval-iters 2 --threads 1 --max-iters 10 --out "$tmp/tiny"
  if [ "$rc" -ne 0 ]; then
    fail "train gpt exited $rc"
    show
    finish "$1"
  fi
  # "T: we\nC: all\nA:" (16 tokens fit): letters the synthetic corpus has too.
  printf '%s\n' '{"role_prefix": {"system": "T: ", "user": "C: ", "assistant": "A: "},' \
    ' "generation_prefix": "A:", "default_stop": ["\\nC:"]}' >"$tmp/chat.json"
}

skip_missing() {
  optional_missing "$*"
  [ "$failures" -eq 0 ] && exit 77
  finish "$test_name"
}

node_script() {
  mkdir "$tmp/$2" && cp "$1" "$tmp/$2/" && ln -s "$npm_dir/node_modules" "$tmp/$2/node_modules"
  echo "$tmp/$2/$(basename "$1")"
}

start_server() {
  local name=$1
  shift
  "$serve" --checkpoint "$tmp/tiny" --host 127.0.0.1 --port 0 --threads 1 "$@" \
    >"$tmp/$name.out" 2>"$tmp/$name.err" &
  bg_pid=$!
  port=
  for _ in $(seq 1 300); do
    port=$(sed -n 's|^serve: listening on http://127\.0\.0\.1:\([0-9]*\) model .* slots [0-9]*$|\1|p' \
      "$tmp/$name.out")
    [ -n "$port" ] && return 0
    kill -0 "$bg_pid" 2>/dev/null || break
    sleep 0.1
  done
  fail "serve ($name): no 'serve: listening on http://127.0.0.1:PORT model NAME slots N' line in 30 s"
  echo "  stdout: $(head -c 600 "$tmp/$name.out")"
  echo "  stderr: $(head -c 600 "$tmp/$name.err")"
  finish "$test_name"
}

stop_server() {
  kill -TERM "$bg_pid"
  wait_exit "$bg_pid" 15 "serve ($1) after SIGTERM"
  bg_pid=
  [ "$rc" -eq 0 ] || { fail "serve ($1): exit $rc after SIGTERM, expected 0"; tail -5 "$tmp/$1.err"; }
}

npm_package() {
  local name=$1 major=$2 version
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node or npm not found (Node 20 or later, with its npm)"
    return 1
  fi
  if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "node $(node --version) is older than 20"
    return 1
  fi
  npm_dir=${FORGE_NPM_CACHE:-$HOME/.cache/forge-npm}
  version() {
    node -p 'require(process.argv[1]).version' "$npm_dir/node_modules/$name/package.json" 2>/dev/null
  }
  if [[ "$(version)" != "$major".* ]]; then
    mkdir -p "$npm_dir" || { echo "cannot create $npm_dir"; return 1; }
    echo "installing $name@$major into $npm_dir"
    # flock: two runs sharing the cache do not install into it at once.
    if ! (flock 9 && timeout 300 npm install --prefix "$npm_dir" --no-audit --no-fund \
      --no-update-notifier "$name@$major") 9>"$npm_dir/.lock" >"$tmp/npm.log" 2>&1; then
      tail -5 "$tmp/npm.log"
      echo "npm install $name@$major failed or took over 300 s (is the registry reachable?)"
      return 1
    fi
    [[ "$(version)" == "$major".* ]] || { echo "npm install left no $name $major.x in $npm_dir"; return 1; }
  fi
  echo "$name $(version) in $npm_dir, node $(node --version)"
}
