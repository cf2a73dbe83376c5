# Sourced by the GPU scripts (bench/gpu_check.sh, bench/gpu_profile.sh) when PREBUILT names a pack
# of bench/gpu_pack.sh (its .tgz or its folder): unpacks it under $1 (a scratch folder), puts its
# libraries and the GPU machine's CUDA libraries (runtime, cuBLAS, NCCL: /usr/local/cuda or
# Python's nvidia-* packages) on LD_LIBRARY_PATH, and sets pack (its folder) and bin (its programs).
pack=$PREBUILT
if [ -f "$pack" ]; then pack=$1/pack && mkdir -p "$pack" && tar xzf "$PREBUILT" -C "$pack"; fi
[ -f "$pack/tests.txt" ] || { echo "PREBUILT=$PREBUILT: no tests.txt (make it with bench/gpu_pack.sh)"; exit 1; }
cuda_libs=$(find -H /usr/local/cuda*/lib64 /usr/local/lib /opt /usr/lib -name 'libnccl.so.2' -o \
  -name 'libcublasLt.so.1*' -o -name 'libcudart.so.1*' 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$pack/lib:$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin=$pack/bin
echo "== prebuilt: $PREBUILT; CUDA libraries from $cuda_libs"
