// gradcheck: analytic gradients against central finite differences, in f64.
//
//   auto r = gradcheck([](const std::vector<Variable>& v) { return tanh(mul(v[0], v[1])); },
//                      {randn({3, 4}, gen, DType::f64), randn({4}, gen, DType::f64)});
//   REQUIRE(r.ok);   // r.report says which input and element disagreed, and by how much
//
// The output is reduced to a scalar by a dot product with a fixed random tensor r, so one backward
// gives every input's gradient of L = sum(out * r); each input element is then nudged by +-eps and
// (L+ - L-) / 2eps compared with the analytic value: |num - ana| <= atol + rtol |num|.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/variable.h"

namespace forge {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-4;
  // Inputs that get no gradient (e.g. integer targets passed as Tensors do not appear here at all;
  // this marks floating inputs held constant).
  std::vector<bool> constant;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  int64_t checked = 0;  // elements compared
  std::string report;   // the first mismatches
};

using GradcheckFn = std::function<Variable(const std::vector<Variable>&)>;
GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs,
                          GradcheckOptions options = {});

}  // namespace forge
