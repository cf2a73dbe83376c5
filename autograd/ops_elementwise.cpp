// Elementwise differentiable ops. Broadcasting backward: an input's gradient is the output
// gradient summed down to that input's shape (sum_to).
#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace forge {

// ---------------------------------------------------------------------------------------------
// Binary

Variable add(const Variable& a, const Variable& b) {
  Shape sa = a.shape(), sb = b.shape();
  bool ga = a.requires_grad(), gb = b.requires_grad();
  return make_variable(add(a.data(), b.data()), "add", {&a, &b},
                       [=](const Tensor& g) -> std::vector<Tensor> {
                         return {ga ? sum_to(g, sa) : Tensor(), gb ? sum_to(g, sb) : Tensor()};
                       });
}

Variable sub(const Variable& a, const Variable& b) {
  Shape sa = a.shape(), sb = b.shape();
  bool ga = a.requires_grad(), gb = b.requires_grad();
  return make_variable(sub(a.data(), b.data()), "sub", {&a, &b},
                       [=](const Tensor& g) -> std::vector<Tensor> {
                         return {ga ? sum_to(g, sa) : Tensor(), gb ? neg(sum_to(g, sb)) : Tensor()};
                       });
}

Variable mul(const Variable& a, const Variable& b) {
  bool ga = a.requires_grad(), gb = b.requires_grad();
  // d(ab)/da = b, d(ab)/db = a: each side saves the other operand only if needed.
  Tensor save_a = gb ? a.data() : Tensor(), save_b = ga ? b.data() : Tensor();
  Shape sa = a.shape(), sb = b.shape();
  return make_variable(mul(a.data(), b.data()), "mul", {&a, &b},
                       [=](const Tensor& g) -> std::vector<Tensor> {
                         return {ga ? sum_to(mul(g, save_b), sa) : Tensor(),
                                 gb ? sum_to(mul(g, save_a), sb) : Tensor()};
                       });
}

Variable div(const Variable& a, const Variable& b) {
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor out = div(a.data(), b.data());
  Tensor bd = b.data(), saved_out = gb ? out : Tensor();
  Shape sa = a.shape(), sb = b.shape();
  // d(a/b)/da = 1/b;  d(a/b)/db = -a/b^2 = -out/b
  return make_variable(out, "div", {&a, &b}, [=](const Tensor& g) -> std::vector<Tensor> {
    Tensor g_over_b = div(g, bd);
    return {ga ? sum_to(g_over_b, sa) : Tensor(),
            gb ? neg(sum_to(mul(g_over_b, saved_out), sb)) : Tensor()};
  });
}

Variable add(const Variable& a, double s) {
  return make_variable(add(a.data(), s), "add_scalar", {&a},
                       [](const Tensor& g) -> std::vector<Tensor> { return {g}; });
}

Variable mul(const Variable& a, double s) {
  return make_variable(mul(a.data(), s), "mul_scalar", {&a},
                       [s](const Tensor& g) -> std::vector<Tensor> { return {mul(g, s)}; });
}

// ---------------------------------------------------------------------------------------------
// Unary

Variable neg(const Variable& a) {
  return make_variable(neg(a.data()), "neg", {&a},
                       [](const Tensor& g) -> std::vector<Tensor> { return {neg(g)}; });
}

Variable exp(const Variable& a) {
  Tensor y = exp(a.data());  // d exp(x) = exp(x): save the output
  return make_variable(y, "exp", {&a},
                       [y](const Tensor& g) -> std::vector<Tensor> { return {mul(g, y)}; });
}

Variable log(const Variable& a) {
  Tensor x = a.data();
  return make_variable(log(x), "log", {&a},
                       [x](const Tensor& g) -> std::vector<Tensor> { return {div(g, x)}; });
}

Variable sqrt(const Variable& a) {
  Tensor y = sqrt(a.data());  // d sqrt(x) = 1 / (2 sqrt(x))
  return make_variable(y, "sqrt", {&a}, [y](const Tensor& g) -> std::vector<Tensor> {
    return {mul(div(g, y), 0.5)};
  });
}

Variable tanh(const Variable& a) {
  Tensor y = tanh(a.data());
  return make_variable(y, "tanh", {&a}, [y](const Tensor& g) -> std::vector<Tensor> {
    return {tanh_backward(g, y)};
  });
}

Variable sigmoid(const Variable& a) {
  Tensor y = sigmoid(a.data());
  return make_variable(y, "sigmoid", {&a}, [y](const Tensor& g) -> std::vector<Tensor> {
    return {sigmoid_backward(g, y)};
  });
}

Variable relu(const Variable& a) {
  Tensor y = relu(a.data());  // relu'(x) = [y > 0]: the output serves as well as the input
  return make_variable(y, "relu", {&a}, [y](const Tensor& g) -> std::vector<Tensor> {
    return {relu_backward(g, y)};
  });
}

Variable gelu(const Variable& a, GeluApprox approx) {
  Tensor y = gelu(a.data(), approx);
  // Under autocast the input is kept for backward in 16 bits (autograd/autocast.h).
  std::optional<DType> dt = autocast_dtype_for(a.data());
  Tensor x = dt ? a.data().to(*dt) : a.data();
  return make_variable(y, "gelu", {&a}, [x, approx](const Tensor& g) -> std::vector<Tensor> {
    return {gelu_backward(g, x.to(g.dtype()), approx)};
  });
}

Variable pow(const Variable& a, double exponent) {
  Tensor x = a.data();
  return make_variable(pow(x, exponent), "pow", {&a},
                       [x, exponent](const Tensor& g) -> std::vector<Tensor> {
                         // d x^p = p x^(p-1)
                         return {mul(mul(g, pow(x, exponent - 1.0)), exponent)};
                       });
}

// ---------------------------------------------------------------------------------------------
// where, masked_fill

Variable where(const Tensor& cond, const Variable& a, const Variable& b) {
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Shape sa = a.shape(), sb = b.shape();
  Tensor out = where(cond, a.data(), b.data());
  return make_variable(out, "where", {&a, &b}, [=](const Tensor& g) -> std::vector<Tensor> {
    Tensor zero = zeros({}, g.dtype(), g.device());
    return {ga ? sum_to(where(cond, g, zero), sa) : Tensor(),
            gb ? sum_to(where(cond, zero, g), sb) : Tensor()};
  });
}

Variable masked_fill(const Variable& a, const Tensor& mask, double value) {
  Shape sa = a.shape();
  return make_variable(masked_fill(a.data(), mask, value), "masked_fill", {&a},
                       [mask, sa](const Tensor& g) -> std::vector<Tensor> {
                         return {sum_to(masked_fill(g, mask, 0.0), sa)};
                       });
}

}  // namespace forge
