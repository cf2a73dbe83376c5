#!/usr/bin/env bash
# Several machines, as far as one machine can show it: a 2-rank `train gpt --dp 2` whose ranks
# talk over OpenMPI's TCP transport alone (the ob1 messaging layer, `--mca btl tcp,self` on the
# loopback interface, our shared-memory all-reduce off), as ranks on two hosts of a hostfile would,
# gives the losses of the same job over shared memory, bit for bit. The README's "Several
# machines" section runs the same command with a real hostfile.
# Usage: cli_tcp.sh path/to/train
set -u

train=${1:?usage: cli_tcp.sh path/to/train}
. "$(dirname "$0")/cli_lib.sh"
use_mpirun

corpus=$(test_corpus)
# 1 MiB buckets: over shared memory these take our shared-memory window, over TCP MPI's all-reduce.
job=(gpt --data "$corpus" --n-layer 2 --n-head 2 --n-embd 32 --block-size 16 --eval-iters 2
  --eval-interval 10 --threads 1 --batch-size 4 --dp 2 --max-iters 20 --bucket-mb 1)

run "${mpi[@]}" -np 2 "$train" "${job[@]}" --out "$tmp/shm" --metrics "$tmp/shm.jsonl"
[ "$rc" -eq 0 ] || { fail "the shared-memory run exited $rc"; show; }

echo "localhost slots=2" >"$tmp/hostfile"
# The transports by environment, as a user's shell on the first host would set them for mpirun.
# btl_base_verbose makes each rank name the transports it opened (checked below).
run env OMPI_MCA_btl=tcp,self OMPI_MCA_pml=ob1 OMPI_MCA_btl_tcp_if_include=lo \
  OMPI_MCA_btl_base_verbose=30 FORGE_COMM_SHM=0 \
  "${mpi[@]}" --hostfile "$tmp/hostfile" -np 2 "$train" "${job[@]}" --out "$tmp/tcp" \
  --metrics "$tmp/tcp.jsonl"
[ "$rc" -eq 0 ] || { fail "the TCP run exited $rc"; show; }
grep -q "data parallel: 2 ranks" "$tmp/out" || { fail "TCP run: no data-parallel line"; show; }
# Each rank reports the BTLs it selected; vader (shared memory) must not be among them.
opened=$(cat "$tmp/err" "$tmp/out" | grep -o "select: initializing btl component tcp" | wc -l)
[ "$opened" -eq 2 ] || { fail "TCP run: $opened ranks report opening the tcp BTL, expected 2"; show; }
if cat "$tmp/err" "$tmp/out" | grep -q "select: initializing btl component vader"; then
  fail "TCP run: the shared-memory BTL (vader) was opened"
  show
fi
worst=$(compare_losses "$tmp/shm.jsonl" "$tmp/tcp.jsonl" 20 0) ||
  fail "the TCP run's losses differ from the shared-memory run's: $worst"
echo "dp=2 over TCP against dp=2 over shared memory: worst relative loss difference $worst"

finish cli_tcp
