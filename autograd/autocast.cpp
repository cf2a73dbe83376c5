#include "autograd/autocast.h"

#include <unordered_map>

#include "tensor/allocator.h"
#include "tensor/error.h"

namespace forge {

namespace {

thread_local std::optional<DType> g_dtype;
thread_local int g_depth = 0;

struct CacheKey {
  const VariableImpl* leaf;
  DType dtype;
  bool operator==(const CacheKey&) const = default;
};
struct CacheKeyHash {
  size_t operator()(const CacheKey& k) const {
    return std::hash<const void*>()(k.leaf) ^ (size_t(k.dtype) << 1);
  }
};
struct CacheEntry {
  Tensor source;  // the f32 tensor the copy was made from (its storage identifies it)
  Tensor copy;
};
thread_local std::unordered_map<CacheKey, CacheEntry, CacheKeyHash> g_cache;

}  // namespace

Autocast::Autocast(DType dtype) : saved_(g_dtype) {
  FORGE_CHECK(dtype == DType::bf16 || dtype == DType::f16,
              "autocast: dtype must be bf16 or f16, got {}", dtype);
  g_dtype = dtype;
  ++g_depth;
}

Autocast::~Autocast() {
  g_dtype = saved_;
  if (--g_depth == 0) g_cache.clear();
}

NoAutocast::NoAutocast() : saved_(g_dtype) {
  g_dtype.reset();
}

NoAutocast::~NoAutocast() {
  g_dtype = saved_;
}

std::optional<DType> autocast_dtype() {
  return g_dtype;
}

std::optional<DType> autocast_dtype_for(const Tensor& t) {
  return t.dtype() == DType::f32 ? g_dtype : std::nullopt;
}

Tensor autocast_weight(const Variable& v, DType dtype) {
  if (!v.is_leaf() || v.data().dtype() == dtype) return v.data().to(dtype);
  CacheKey key{v.impl(), dtype};
  auto it = g_cache.find(key);
  // Re-made when the leaf's data is another tensor than the one the copy was made from.
  const Tensor& d = v.data();
  if (it != g_cache.end()) {
    const Tensor& src = it->second.source;
    if (src.raw_data() == d.raw_data() && src.shape() == d.shape() && src.strides() == d.strides())
      return it->second.copy;
  }
  MemoryTagScope tag(MemoryTag::parameters);  // copies of parameters
  Tensor copy = v.data().to(dtype);
  g_cache[key] = {v.data(), copy};
  return copy;
}

size_t autocast_cache_size() {
  return g_cache.size();
}

}  // namespace forge
