// Quantizing a model: QAT (prepare, train, convert), dynamic int8, int4 weight-only, and the
// quantized layers, saved and loaded as safetensors.
//
//   // Dynamic post-training quantization: int8 weights, activations quantized per batch.
//   quantize_dynamic(model);                              // every Linear now runs Int8Linear
//   quantize_dynamic(gpt, {.bits = 4, .group = 64});      // int4 weight-only instead
//
//   // Quantization-aware training: fake quantization on Linear inputs and weights, then convert.
//   prepare_qat(model, {.freeze_after = 200});
//   ... train as usual ...
//   convert(model);                                       // real int8 layers, static input scale
//
//   save_quantized("mlp-int8.safetensors", model);        // integer tensors + scales
//   load_quantized(other, load_safetensors(path), path);  // same architecture, f32 until then
//
// Every quantized layer is installed into its Linear (Linear::set_quantized), so the model's own
// forward runs it. Layers that are not Linear modules (embeddings, layer norms, GPT's head tied to
// the token embedding) stay in f32.
//
// Int8Linear computes y = x W^T + b as
//   q_x = clamp(round(x * (1 / s_x)) + z_x, range)           u8 activations (7-bit by default)
//   acc = sum_k (q_x - z_x) q_w                                exact s32 (quant/int8_gemm.h)
//   y   = s_x s_w[n] acc + b[n]                                 per output channel n
// with s_x, z_x from the batch's own extremes (dynamic: one scale for all rows of the batch, as
// PyTorch's dynamic Linear, so a row's output depends a little on the other rows; or, with
// set_per_row, each row's own) or fixed by QAT's observer (static). In the
// static case the bias is stored as s32 in units of s_x s_w[n] (as int8 inference engines keep it)
// and dequantized in the same epilogue. The output is f32: each layer quantizes its own input, so
// layers in between (activations, layer norms) stay in f32.
//
// On a GPU (an input on cuda) Int8Linear runs the same steps there (quant/int8_gemm_cuda.h) with
// the same numbers: the batch's extremes, the u8 bytes and the s32 sums are the CPU's exactly, and
// the epilogue rounds as the CPU's. Module::to moves registered parameters only, so the layer keeps
// its integers on the host and copies them to a GPU on the first input it sees there. Int4Linear
// runs on the CPU only and refuses a GPU input by name.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"
#include "models/layers.h"
#include "quant/fake_quant.h"
#include "quant/int4.h"
#include "quant/int8_gemm.h"

namespace forge {

struct QuantConfig {
  // Activations: u8 affine per tensor. [0, 127] by default (PyTorch's reduce_range on x86): the
  // AVX2 kernel's pairwise products then never saturate, so it runs its fast path.
  QuantRange activation_range = QuantRange::u7();
  // affine (zero point from the range, u8) or symmetric (zero 0, with an s8 range such as
  // QuantRange::s8(): the kernels take it as u8 with zero point 128, exactly).
  QScheme activation_scheme = QScheme::affine;
  // Weights: s8 symmetric in [-127, 127], one scale per output channel.
  QuantRange weight_range = QuantRange::s8_symmetric();
  // QAT: observed steps before observers freeze (-1: never), and the activation observer.
  int64_t freeze_after = -1;
  ObserverKind activation_observer = ObserverKind::moving_average;
};

// Int8 weights with per-channel scales and an integer matrix product; inference only.
class Int8Linear : public Module {
 public:
  // Quantizes an f32 weight (N, K) per channel. Without input parameters the activations are
  // quantized per batch (dynamic); with them, with those fixed ones (static) and an s32 bias.
  Int8Linear(const Tensor& weight, const Tensor& bias, const QuantConfig& config,
             std::optional<QuantParams> input = std::nullopt);
  // From already quantized tensors (a file): weight i8 (N, K), weight_scale f32 (N), bias f32 (N)
  // or i32 (N) with a static input, or undefined.
  Int8Linear(Tensor weight_q, Tensor weight_scale, Tensor bias, QuantRange activation_range,
             QScheme activation_scheme, std::optional<QuantParams> input);
  // f32 (..., K) -> f32 (..., N), on the input's device (cpu or cuda); no gradient.
  Variable forward(const Variable& x) override;
  // Dynamic layers only: one activation grid per row (per token) instead of per batch, so that a
  // row's output does not depend on the other rows (a server's batch invariance). The rows still
  // share one pass over the weights (int8_gemm), then each row is dequantized with its own grid,
  // rounded as int8_linear_f32 rounds.
  void set_per_row(bool on);
  bool per_row() const { return per_row_; }

  // What a file holds for this layer, names relative to the Linear ("weight", "weight_scale",
  // "bias", and for static layers "input_scale", "input_zero_point").
  NamedTensors state() const;
  bool is_static() const { return input_.has_value(); }
  const Tensor& weight_q() const { return weight_q_; }
  const Tensor& weight_scale() const { return weight_scale_; }
  QuantRange activation_range() const { return activation_range_; }
  QScheme activation_scheme() const { return activation_scheme_; }

 private:
  // The activation grid for rows (M, K) f32 on either device: s_x, and z_x, qmin, qmax already
  // moved up by 128 for an s8 grid (the kernels take u8).
  struct InputGrid {
    float scale;
    int32_t zero, qmin, qmax;
  };
  InputGrid input_grid(const Tensor& rows) const;
  void pack();
  Tensor forward_cuda(const Tensor& rows, const InputGrid& grid);

  // The layer's tensors on the GPU that ran it last (made there on its first input): the weight
  // (N, K) i8 unpacked, its scales and the epilogue's f32 bias (or undefined).
  struct OnDevice {
    Device device = Device::cpu();
    Tensor weight_q, weight_scale, bias_f32;
  };

  Tensor weight_q_;      // i8 (N, K)
  Tensor weight_scale_;  // f32 (N)
  Tensor bias_;          // dynamic: f32 (N); static: i32 (N) in units of s_x s_w[n]; or undefined
  Tensor bias_f32_;      // the bias the epilogue adds, f32 (N)
  QuantRange activation_range_;
  QScheme activation_scheme_;
  std::optional<QuantParams> input_;
  PackedInt8Weight packed_;
  OnDevice on_device_;
  bool per_row_ = false;
};

// int4 weight-only (quant/int4.h): weights in 4 bits per group, activations f32 or bf16.
class Int4Linear : public Module {
 public:
  Int4Linear(Int4Weight weight, Tensor bias);
  Variable forward(const Variable& x) override;  // no gradient
  NamedTensors state() const;  // "weight" (u8 packed), "weight_scale", "weight_zero", "bias"
  const Int4Weight& weight() const { return weight_; }

 private:
  Int4Weight weight_;
  Tensor bias_;
};

// QAT's stand-in for a Linear: linear(fq_x(x), fq_w(W), b) with fake quantization of the input
// (per tensor, affine) and of the weight (per channel, symmetric). The weight and bias are the
// Linear's own variables, so an optimizer built before prepare_qat keeps training them.
class QatLinear : public Module {
 public:
  QatLinear(const Linear& linear, const QuantConfig& config);
  Variable forward(const Variable& x) override;
  std::shared_ptr<FakeQuantize> input_fake_quant, weight_fake_quant;

 private:
  Variable weight_, bias_;
};

struct QuantizeOptions {
  int bits = 8;        // 8: Int8Linear (dynamic); 4: Int4Linear
  int64_t group = 64;  // int4 group size: 32, 64 or 128
  QuantConfig config;
};

// Every Linear of a model (the model itself first when it is one) with its dotted name.
std::vector<std::pair<std::string, Linear*>> named_linears(Module& model);
std::vector<std::pair<std::string, const Linear*>> named_linears(const Module& model);

// Each returns the number of Linear layers changed, and either changes every layer it should or,
// when one fails (already quantized, a group that does not divide, ...), none; errors name the
// layer. Integer layers release the f32 weights they replace (Linear::set_quantized).
int quantize_dynamic(Module& model, const QuantizeOptions& options = {});
int prepare_qat(Module& model, const QuantConfig& config = {});
// Replaces every QatLinear by an Int8Linear with the QAT observers' scales; the model must have
// seen data in training mode (an observer that saw nothing is an error naming the layer).
int convert(Module& model);
// Turns QAT's observers off (they keep their current scales) in every QatLinear.
void freeze_observers(Module& model);
// Int8Linear::set_per_row on every dynamic int8 layer; returns how many.
int set_int8_per_row(Module& model, bool on);

// The model's tensors as a quantized file holds them: each quantized Linear's integer tensors and
// scales (named "<layer>.weight", "<layer>.weight_scale", ...), every other parameter in f32.
NamedTensors quantized_state(const Module& model);
// Bytes of those tensors: the size of the quantized model. (f32 model: state_bytes(state_dict).)
int64_t state_bytes(const NamedTensors& state);
// Writes quantized_state(model), with metadata (kept) and "quantization": describe_quantization.
void save_quantized(const std::string& path, const Module& model,
                    std::map<std::string, std::string> metadata = {});
// Installs the quantized layers a file describes into a model of the same architecture (f32, not
// quantized) and loads every other parameter. The dtype of "<layer>.weight" says what each Linear
// is: i8 Int8Linear, u8 int4, f32 plain. Everything is checked before the model changes; errors
// name the file and the tensor. save_quantized refuses a model whose int8 layers use different
// activation grids (a file has one).
void load_quantized(Module& model, const SafetensorsContents& file, const std::string& path);
// "int8-dynamic", "int8-static", "int4-g64", "none", or a mix such as "int8-dynamic+f32".
std::string describe_quantization(const Module& model);

}  // namespace forge
