// Tensor: a view of typed, strided memory.
//
//   Tensor a = randn({2, 3}, gen);          // f32, contiguous, on the cpu
//   Tensor b = a.transpose(0, 1);           // a view: shares a's storage, strides swapped
//   Tensor c = b.contiguous();              // a copy, since b is not contiguous
//   Tensor h = a.to(DType::bf16);           // a converted copy
//   a.narrow(1, 0, 2).fill_(0);             // writes through the view into a
//   std::vector<float> v = a.to_vector<float>();
//
// A tensor is a handle: copying it shares the storage. Shapes and strides count elements; the
// offset into the storage counts bytes. Views never copy; contiguous(), to() and clone() do.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/allocator.h"
#include "tensor/dtype.h"
#include "tensor/shape.h"

namespace forge {

class Storage {
 public:
  // Allocates `nbytes` on `device`, tagged with the current MemoryTag (unless `allocate` is false:
  // then allocate_memory() does).
  Storage(size_t nbytes, Device device, bool allocate = true);
  // Wraps memory owned elsewhere; `release` runs when the last tensor using it goes.
  Storage(void* data, size_t nbytes, Device device, std::function<void(void*)> release);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  MemoryTag tag() const { return tag_; }
  // Counts the memory under another tag from now on (the allocator's counters move with it).
  void set_tag(MemoryTag tag);
  // Frees the memory while tensors keep this storage (ZeRO stage 3's parameters between uses:
  // autograd's saved views stay valid), and allocates it again, contents undefined. A freed
  // storage's data() is null. Not for borrowed memory.
  void free_memory();
  void allocate_memory();
  bool allocated() const { return data_ != nullptr || nbytes_ == 0; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  MemoryTag tag_ = MemoryTag::other;
  std::function<void(void*)> release_;  // set for borrowed memory
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor: defined() is false
  // A fresh contiguous tensor (contents uninitialised).
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  // The same without memory yet (storage()->allocate_memory() gives it): a buffer that views
  // describe before it is needed (ZeRO stage 3's gathered units).
  static Tensor unallocated(const Shape& shape, DType dtype = DType::f32,
                            Device device = Device::cpu());

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t size(int dim) const { return shape_[wrap_dim(dim, dim_count(), "size")]; }
  const Shape& strides() const { return strides_; }
  int64_t stride(int dim) const { return strides_[wrap_dim(dim, dim_count(), "stride")]; }
  int dim() const { return shape_.size(); }
  int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  size_t itemsize() const { return dtype_size(dtype_); }
  size_t nbytes() const { return size_t(numel()) * itemsize(); }
  Device device() const;
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t offset_bytes() const { return offset_; }

  void* raw_data() const;
  // Typed pointer to the first element; throws when T is not this tensor's dtype.
  template <class T>
  T* data() const {
    FORGE_CHECK(dtype_of<T> == dtype_, "data<{}>() called on a {} tensor", dtype_of<T>, dtype_);
    return static_cast<T*>(raw_data());
  }

  // ---- Views (share storage) ----
  // `shape` may hold one -1, inferred from the element count. view() requires strides that allow
  // it; reshape() copies when they do not.
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const;
  Tensor flatten(int start_dim = 0, int end_dim = -1) const;
  Tensor permute(const std::vector<int>& order) const;
  Tensor transpose(int d0, int d1) const;
  Tensor t() const;  // 2-D transpose
  Tensor narrow(int dim, int64_t start, int64_t length) const;
  Tensor select(int dim, int64_t index) const;  // drops `dim`
  Tensor expand(const Shape& shape) const;      // size-1 dims (or new leading ones) -> stride 0
  Tensor unsqueeze(int dim) const;
  Tensor squeeze(int dim) const;
  // The same memory seen with other sizes and strides (in elements, relative to this offset).
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t extra_offset = 0) const;

  // ---- Copies ----
  Tensor contiguous() const;     // this tensor when already contiguous
  Tensor clone() const;          // always a fresh contiguous copy
  Tensor to(DType dtype) const;  // this tensor when already of that dtype
  // A copy on another device (this tensor when already there); host <-> GPU and GPU <-> GPU.
  Tensor to(Device device) const;
  // Copies `src` into this tensor (broadcasting src's shape, converting its dtype).
  Tensor& copy_(const Tensor& src);
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }

  // ---- Element access (slow; for tests, printing and scalars; device tensors are read back) ----
  double item() const;  // a one-element tensor as double
  template <class T>
  std::vector<T> to_vector() const;
  std::string str() const;

 private:
  int dim_count() const { return shape_.size(); }
  Tensor with(const Shape& shape, const Shape& strides, size_t offset) const;

  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Shape strides_;
  size_t offset_ = 0;
  DType dtype_ = DType::f32;
};

// Tensors with names, in order (state dicts, checkpoint contents).
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// ---- Factories ----
Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
            Device device = Device::cpu());
Tensor scalar_tensor(double value, DType dtype = DType::f32);
// [start, end) in steps of `step`.
Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::i64);
// A tensor holding a copy of `values` with the given shape (defaults to 1-D).
template <class T>
Tensor from_vector(const std::vector<T>& values, Shape shape = {});

// ---- Checks shared by the ops ----
void check_same_device(const Tensor& a, const Tensor& b, const char* op);

}  // namespace forge

template <>
struct fmt::formatter<forge::Tensor> : fmt::formatter<std::string_view> {
  auto format(const forge::Tensor& t, format_context& ctx) const {
    return fmt::format_to(ctx.out(), "{}", t.str());
  }
};
