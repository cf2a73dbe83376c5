#include "tensor/tensor.h"

#include <cmath>
#include <cstring>
#include <numeric>

#include "tensor/cpu/convert.h"
#include "tensor/cpu/cpu_features.h"
#include "tensor/cpu/loops.h"
#include "tensor/cuda/cuda.h"
#include "tensor/cuda/cuda_misc.h"
#include "tensor/cuda/cuda_ops.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Storage

Storage::Storage(size_t nbytes, Device device, bool allocate)
    : nbytes_(nbytes), device_(device), tag_(current_memory_tag()) {
  if (allocate) data_ = allocator_for(device).allocate(nbytes, tag_);
}

Storage::Storage(void* data, size_t nbytes, Device device, std::function<void(void*)> release)
    : data_(data), nbytes_(nbytes), device_(device), release_(std::move(release)) {}

Storage::~Storage() {
  if (release_)
    release_(data_);
  else if (data_)
    allocator_for(device_).deallocate(data_, nbytes_, tag_);
}

void Storage::free_memory() {
  FORGE_CHECK(!release_, "Storage::free_memory: the memory is borrowed");
  if (!data_) return;
  allocator_for(device_).deallocate(data_, nbytes_, tag_);
  data_ = nullptr;
}

void Storage::allocate_memory() {
  FORGE_CHECK(!release_, "Storage::allocate_memory: the memory is borrowed");
  if (data_ || nbytes_ == 0) return;
  data_ = allocator_for(device_).allocate(nbytes_, tag_);
}

void Storage::set_tag(MemoryTag tag) {
  if (release_ || tag == tag_) return;  // borrowed memory is not counted
  record_retag(device_, allocator_for(device_).accounted(nbytes_), tag_, tag);
  tag_ = tag;
}

// ---------------------------------------------------------------------------------------------
// Tensor basics

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) FORGE_CHECK(d >= 0, "empty: negative size in shape {}", shape);
  Tensor t;
  t.storage_ = std::make_shared<Storage>(size_t(shape.numel()) * dtype_size(dtype), device);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::unallocated(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) FORGE_CHECK(d >= 0, "unallocated: negative size in shape {}", shape);
  Tensor t;
  t.storage_ = std::make_shared<Storage>(size_t(shape.numel()) * dtype_size(dtype), device, false);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Device Tensor::device() const {
  return storage_ ? storage_->device() : Device::cpu();
}

void* Tensor::raw_data() const {
  FORGE_CHECK(defined(), "data access on an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_;
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int d = dim() - 1; d >= 0; --d) {
    if (shape_[d] == 1) continue;
    if (strides_[d] != expected) return false;
    expected *= shape_[d];
  }
  return true;
}

Tensor Tensor::with(const Shape& shape, const Shape& strides, size_t offset) const {
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = strides;
  t.offset_ = offset;
  return t;
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  FORGE_CHECK(a.device() == b.device(), "{}: tensors on different devices ({} and {})", op,
              a.device().str(), b.device().str());
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  int n = std::max(a.size(), b.size());
  Shape out;
  out.resize(n);
  for (int i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    FORGE_CHECK(da == db || da == 1 || db == 1, "{}: shapes {} and {} do not broadcast", op, a, b);
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Views

namespace {
Shape infer_shape(const Shape& shape, int64_t numel, const char* op, const Shape& from) {
  Shape out = shape;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      FORGE_CHECK(infer < 0, "{}: only one dim may be -1, got {}", op, shape);
      infer = i;
    } else {
      FORGE_CHECK(out[i] >= 0, "{}: invalid size in {}", op, shape);
      known *= out[i];
    }
  }
  if (infer >= 0) {
    FORGE_CHECK(known > 0 && numel % known == 0, "{}: cannot view {} elements {} as {}", op, numel,
                from, shape);
    out[infer] = numel / known;
  }
  FORGE_CHECK(out.numel() == numel, "{}: shape {} has {} elements, tensor {} has {}", op, shape,
              out.numel(), from, numel);
  return out;
}

// Strides for viewing (shape, strides) as `target` without copying, if possible (the algorithm of
// PyTorch's computeStride: group dims that are contiguous with each other).
bool view_strides(const Shape& shape, const Shape& strides, const Shape& target, Shape& out) {
  out.resize(target.size());
  if (shape.numel() == 0 || shape.size() == 0) {
    out = contiguous_strides(target);
    return true;
  }
  int view_d = target.size() - 1;
  int64_t chunk_base_stride = strides.size() ? strides.back() : 1;
  int64_t tensor_numel = 1, view_numel = 1;
  for (int d = shape.size() - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || target[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= target[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}
}  // namespace

Tensor Tensor::view(const Shape& shape) const {
  Shape target = infer_shape(shape, numel(), "view", shape_);
  Shape st;
  FORGE_CHECK(view_strides(shape_, strides_, target, st),
              "view: cannot view a tensor of shape {} with strides {} as {} without a copy; use "
              "reshape()",
              shape_, strides_, target);
  return with(target, st, offset_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape target = infer_shape(shape, numel(), "reshape", shape_);
  Shape st;
  if (view_strides(shape_, strides_, target, st)) return with(target, st, offset_);
  return contiguous().view(target);
}

Tensor Tensor::flatten(int start_dim, int end_dim) const {
  if (dim() == 0) return reshape({1});
  int s = wrap_dim(start_dim, dim(), "flatten"), e = wrap_dim(end_dim, dim(), "flatten");
  FORGE_CHECK(s <= e, "flatten: start_dim {} after end_dim {}", start_dim, end_dim);
  Shape out;
  for (int i = 0; i < s; ++i) out.push_back(shape_[i]);
  int64_t p = 1;
  for (int i = s; i <= e; ++i) p *= shape_[i];
  out.push_back(p);
  for (int i = e + 1; i < dim(); ++i) out.push_back(shape_[i]);
  return reshape(out);
}

Tensor Tensor::permute(const std::vector<int>& order) const {
  FORGE_CHECK(int(order.size()) == dim(), "permute: order {} has {} entries for a {}-d tensor",
              order, order.size(), dim());
  Shape s, st;
  bool seen[kMaxDims] = {};
  for (int o : order) {
    int d = wrap_dim(o, dim(), "permute");
    FORGE_CHECK(!seen[d], "permute: dim {} repeated in {}", d, order);
    seen[d] = true;
    s.push_back(shape_[d]);
    st.push_back(strides_[d]);
  }
  return with(s, st, offset_);
}

Tensor Tensor::transpose(int d0, int d1) const {
  int a = wrap_dim(d0, dim(), "transpose"), b = wrap_dim(d1, dim(), "transpose");
  Shape s = shape_, st = strides_;
  std::swap(s[a], s[b]);
  std::swap(st[a], st[b]);
  return with(s, st, offset_);
}

Tensor Tensor::t() const {
  FORGE_CHECK(dim() == 2, "t: expected a 2-d tensor, got shape {}", shape_);
  return transpose(0, 1);
}

Tensor Tensor::narrow(int dim_, int64_t start, int64_t length) const {
  int d = wrap_dim(dim_, dim(), "narrow");
  if (start < 0) start += shape_[d];
  FORGE_CHECK(start >= 0 && length >= 0 && start + length <= shape_[d],
              "narrow: range [{}, {}) out of bounds for dim {} of shape {}", start, start + length,
              d, shape_);
  Shape s = shape_;
  s[d] = length;
  return with(s, strides_, offset_ + size_t(start * strides_[d]) * itemsize());
}

Tensor Tensor::select(int dim_, int64_t index) const {
  int d = wrap_dim(dim_, dim(), "select");
  if (index < 0) index += shape_[d];
  FORGE_CHECK(index >= 0 && index < shape_[d], "select: index {} out of range for dim {} of {}",
              index, d, shape_);
  Shape s = shape_, st = strides_;
  s.erase(d);
  st.erase(d);
  return with(s, st, offset_ + size_t(index * strides_[d]) * itemsize());
}

Tensor Tensor::expand(const Shape& shape) const {
  FORGE_CHECK(shape.size() >= dim(), "expand: cannot expand {} to fewer dims {}", shape_, shape);
  int lead = shape.size() - dim();
  Shape st;
  st.resize(shape.size());
  Shape out = shape;
  for (int i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      FORGE_CHECK(shape[i] >= 0, "expand: invalid size in {}", shape);
      st[i] = 0;
      continue;
    }
    int64_t have = shape_[i - lead];
    if (shape[i] == -1) out[i] = have;
    if (have == out[i])
      st[i] = strides_[i - lead];
    else {
      FORGE_CHECK(have == 1, "expand: dim {} of {} has size {}, cannot expand to {}", i - lead,
                  shape_, have, shape);
      st[i] = 0;
    }
  }
  return with(out, st, offset_);
}

Tensor Tensor::unsqueeze(int dim_) const {
  int d = dim_ < 0 ? dim_ + dim() + 1 : dim_;
  FORGE_CHECK(d >= 0 && d <= dim(), "unsqueeze: dim {} out of range for {}-d tensor", dim_, dim());
  Shape s = shape_, st = strides_;
  int64_t stride = d < dim() ? strides_[d] * shape_[d] : 1;
  s.insert(d, 1);
  st.insert(d, stride);
  return with(s, st, offset_);
}

Tensor Tensor::squeeze(int dim_) const {
  int d = wrap_dim(dim_, dim(), "squeeze");
  if (shape_[d] != 1) return *this;
  Shape s = shape_, st = strides_;
  s.erase(d);
  st.erase(d);
  return with(s, st, offset_);
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t extra_offset) const {
  FORGE_CHECK(shape.size() == strides.size(), "as_strided: shape {} and strides {} differ in dims",
              shape, strides);
  int64_t lo = extra_offset, hi = extra_offset;
  for (int i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) return with(shape, strides, offset_);
    (strides[i] >= 0 ? hi : lo) += (shape[i] - 1) * strides[i];
  }
  int64_t base = int64_t(offset_ / itemsize());
  FORGE_CHECK(base + lo >= 0 && size_t(base + hi + 1) * itemsize() <= storage_->nbytes(),
              "as_strided: view {} / {} reaches outside the storage", shape, strides);
  return with(shape, strides, offset_ + size_t(extra_offset) * itemsize());
}

// ---------------------------------------------------------------------------------------------
// Copies

namespace {

// Unit-stride runs of f32 <-> bf16 on plain pointers, so they vectorise (mixed precision converts
// whole activations and weights every step).
void f32_to_bf16_run(const char* src, char* dst, int64_t n) {
  const float* x = reinterpret_cast<const float*>(src);
  uint16_t* y = reinterpret_cast<uint16_t*>(dst);
  if (cpu::cpu_isa() != cpu::Isa::portable) return cpu::f32_to_bf16_run_avx2(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_bf16_bits(x[i]);
}
void bf16_to_f32_run(const char* src, char* dst, int64_t n) {
  const uint16_t* x = reinterpret_cast<const uint16_t*>(src);
  float* y = reinterpret_cast<float*>(dst);
  if (cpu::cpu_isa() != cpu::Isa::portable) return cpu::bf16_to_f32_run_avx2(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_bits_to_f32(x[i]);
}
// f16 has no shift-only conversion: F16C does it where present, else the scalar recipe.
void f32_to_f16_run(const char* src, char* dst, int64_t n) {
  const float* x = reinterpret_cast<const float*>(src);
  uint16_t* y = reinterpret_cast<uint16_t*>(dst);
  if (cpu::cpu_isa() != cpu::Isa::portable) return cpu::f32_to_f16_run_f16c(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_f16_bits(x[i]);
}
void f16_to_f32_run(const char* src, char* dst, int64_t n) {
  const uint16_t* x = reinterpret_cast<const uint16_t*>(src);
  float* y = reinterpret_cast<float*>(dst);
  if (cpu::cpu_isa() != cpu::Isa::portable) return cpu::f16_to_f32_run_f16c(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = f16_bits_to_f32(x[i]);
}

template <class D, class S>
void copy_cast_kernel(const Tensor& dst, const Tensor& src) {
  cpu::for_each_strided<2>(
      dst.shape(), {static_cast<char*>(dst.raw_data()), static_cast<char*>(src.raw_data())},
      {&dst.strides(), &src.strides()}, {int64_t(sizeof(D)), int64_t(sizeof(S))},
      [](char** p, int64_t n, const int64_t* s) {
        const bool unit = s[0] == int64_t(sizeof(D)) && s[1] == int64_t(sizeof(S));
        if constexpr (std::is_same_v<D, S>) {
          if (unit) {
            std::memcpy(p[0], p[1], size_t(n) * sizeof(D));
            return;
          }
        }
        if constexpr (std::is_same_v<D, bf16> && std::is_same_v<S, float>) {
          if (unit) return f32_to_bf16_run(p[1], p[0], n);
        }
        if constexpr (std::is_same_v<D, float> && std::is_same_v<S, bf16>) {
          if (unit) return bf16_to_f32_run(p[1], p[0], n);
        }
        if constexpr (std::is_same_v<D, f16> && std::is_same_v<S, float>) {
          if (unit) return f32_to_f16_run(p[1], p[0], n);
        }
        if constexpr (std::is_same_v<D, float> && std::is_same_v<S, f16>) {
          if (unit) return f16_to_f32_run(p[1], p[0], n);
        }
        for (int64_t i = 0; i < n; ++i) {
          const S* x = reinterpret_cast<const S*>(p[1] + i * s[1]);
          D* y = reinterpret_cast<D*>(p[0] + i * s[0]);
          if constexpr (std::is_same_v<D, S>)
            *y = *x;
          else
            store(y, load(x));
        }
      });
}
}  // namespace

Tensor& Tensor::copy_(const Tensor& src) {
  FORGE_CHECK(defined() && src.defined(), "copy_: undefined tensor");
  if (src.shape() != shape_)
    FORGE_CHECK(broadcast_shapes(src.shape(), shape_, "copy_") == shape_,
                "copy_: source {} does not broadcast to destination {}", src.shape(), shape_);
  if (!device().is_cpu() || !src.device().is_cpu()) {
    // Within one GPU: a kernel (strides, broadcasting, conversion). Between devices the bytes move
    // as they are: the source is first made contiguous, in this dtype and shape, where it lives,
    // and a strided destination receives them through a contiguous buffer on its device.
    if (device() == src.device()) {
      cuda::copy_into(*this, src);
      return *this;
    }
    Tensor s = src.to(dtype_).expand(shape_).contiguous();
    Tensor d = is_contiguous() ? *this : Tensor::empty(shape_, dtype_, device());
    cuda::copy_bytes(d.raw_data(), device(), s.raw_data(), s.device(), nbytes());
    if (d.raw_data() != raw_data()) copy_(d);
    return *this;
  }
  Tensor s = src.shape() == shape_ ? src : src.expand(shape_);
  dispatch_all(dtype_, "copy_", [&]<class D>() {
    dispatch_all(s.dtype(), "copy_", [&]<class S>() { copy_cast_kernel<D, S>(*this, s); });
  });
  return *this;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  if (device().is_cuda()) {  // a strided copy kernel on the device
    Tensor out = Tensor::empty(shape_, dtype_, device());
    cuda::copy_into(out, *this);
    return out;
  }
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = Tensor::empty(shape_, dtype_, device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(Device device) const {
  if (device == this->device()) return *this;
  Tensor out = Tensor::empty(shape_, dtype_, device);
  out.copy_(contiguous());
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor out = Tensor::empty(shape_, dtype, device());
  if (device().is_cuda())  // a cast kernel on the device, any strides
    cuda::copy_into(out, *this);
  else
    out.copy_(*this);
  return out;
}

Tensor& Tensor::fill_(double value) {
  if (device().is_cuda()) {
    cuda::fill_(*this, value);
    return *this;
  }
  dispatch_all(dtype_, "fill_", [&]<class T>() {
    T v;
    store(&v, compute_t<T>(value));
    cpu::for_each_strided<1>(shape_, {static_cast<char*>(raw_data())}, {&strides_},
                             {int64_t(sizeof(T))}, [&](char** p, int64_t n, const int64_t* s) {
                               for (int64_t i = 0; i < n; ++i)
                                 *reinterpret_cast<T*>(p[0] + i * s[0]) = v;
                             });
  });
  return *this;
}

double Tensor::item() const {
  FORGE_CHECK(numel() == 1, "item: expected a one-element tensor, got shape {}", shape_);
  if (!device().is_cpu()) return to(Device::cpu()).item();
  return dispatch_all(dtype_, "item",
                      [&]<class T>() { return double(load(static_cast<const T*>(raw_data()))); });
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  if (!device().is_cpu()) return to(Device::cpu()).to_vector<T>();
  Tensor c = to(dtype_of<T>).contiguous();
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int8_t> Tensor::to_vector<int8_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  std::string s =
      fmt::format("Tensor(shape={}, dtype={}, device={}", shape_, dtype_, device().str());
  if (numel() <= 16) {
    std::vector<double> v = to(Device::cpu()).to(DType::f64).to_vector<double>();
    s += fmt::format(", values=[{:.6g}]", fmt::join(v, ", "));
  }
  return s + ")";
}

// ---------------------------------------------------------------------------------------------
// Factories

Tensor zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  if (device.is_cpu() && t.nbytes())
    std::memset(t.raw_data(), 0, t.nbytes());
  else
    t.zero_();
  return t;
}

Tensor ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1.0, dtype, device);
}

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor scalar_tensor(double value, DType dtype) {
  return full({}, value, dtype);
}

Tensor arange(double start, double end, double step, DType dtype) {
  FORGE_CHECK(step != 0, "arange: step must be non-zero");
  int64_t n = std::max<int64_t>(0, int64_t(std::ceil((end - start) / step)));
  Tensor t = Tensor::empty({n}, dtype);
  dispatch_all(dtype, "arange", [&]<class T>() {
    T* p = t.data<T>();
    for (int64_t i = 0; i < n; ++i) store(p + i, compute_t<T>(start + double(i) * step));
  });
  return t;
}

template <class T>
Tensor from_vector(const std::vector<T>& values, Shape shape) {
  if (shape.empty() && values.size() != 1) shape = Shape{int64_t(values.size())};
  FORGE_CHECK(shape.numel() == int64_t(values.size()),
              "from_vector: {} values do not fill shape {}", values.size(), shape);
  Tensor t = Tensor::empty(shape, dtype_of<T>);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return t;
}
template Tensor from_vector<float>(const std::vector<float>&, Shape);
template Tensor from_vector<double>(const std::vector<double>&, Shape);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, Shape);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, Shape);
template Tensor from_vector<int8_t>(const std::vector<int8_t>&, Shape);
template Tensor from_vector<uint8_t>(const std::vector<uint8_t>&, Shape);
template Tensor from_vector<bf16>(const std::vector<bf16>&, Shape);
template Tensor from_vector<f16>(const std::vector<f16>&, Shape);

}  // namespace forge
