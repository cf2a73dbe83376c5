#!/bin/sh
# Runs a test program on N ranks of this machine: tests/mpirun.sh N PROGRAM [ARGS...]
# (shared memory between the ranks; root and more ranks than cores allowed, as in CI).
# Skips (exit 77) where OpenMPI's mpirun is missing; fails there under FORGE_REQUIRE_OPTIONAL=1.
set -u
n="$1"
shift
if ! command -v mpirun >/dev/null 2>&1; then
  if [ "${FORGE_REQUIRE_OPTIONAL:-}" = 1 ]; then
    echo "FAIL: FORGE_REQUIRE_OPTIONAL=1 and mpirun not found (Debian: apt-get install openmpi-bin)"
    exit 1
  fi
  echo "SKIPPED: mpirun not found (Debian: apt-get install openmpi-bin)"
  exit 77
fi
# vader's single-copy transfers use process_vm_readv, which containers often forbid; plain
# copies through the shared segment work everywhere.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_btl=self,vader
export OMPI_MCA_rmaps_base_oversubscribe=1
exec mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$n" "$@"
