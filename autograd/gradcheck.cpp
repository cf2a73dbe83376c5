#include "autograd/gradcheck.h"

#include <cmath>

#include "autograd/functions.h"
#include "tensor/ops.h"
#include "tensor/random.h"

namespace forge {

GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs,
                          GradcheckOptions opt) {
  std::vector<Variable> vars;
  for (size_t i = 0; i < inputs.size(); ++i) {
    FORGE_CHECK(inputs[i].dtype() == DType::f64, "gradcheck: input {} is {}, expected f64", i,
                inputs[i].dtype());
    bool constant = i < opt.constant.size() && opt.constant[i];
    vars.emplace_back(inputs[i].clone(), !constant);
  }
  Variable out = fn(vars);
  FORGE_CHECK(out.dtype() == DType::f64, "gradcheck: output is {}, expected f64", out.dtype());
  Generator gen(12345);
  Tensor r = randn(out.shape(), gen, DType::f64);
  out.backward(r);

  auto loss = [&]() {
    NoGradGuard ng;
    return sum(mul(fn(vars).data(), r)).item();
  };

  GradcheckResult res;
  int reported = 0;
  for (size_t i = 0; i < vars.size(); ++i) {
    if (!vars[i].requires_grad()) continue;
    Tensor& x = vars[i].data();
    double* px = x.data<double>();
    Tensor ana = vars[i].grad().defined() ? vars[i].grad() : zeros(x.shape(), DType::f64);
    std::vector<double> a = ana.to_vector<double>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      double saved = px[j];
      px[j] = saved + opt.eps;
      double lp = loss();
      px[j] = saved - opt.eps;
      double lm = loss();
      px[j] = saved;
      double num = (lp - lm) / (2 * opt.eps);
      double err = std::abs(num - a[size_t(j)]);
      res.max_abs_error = std::max(res.max_abs_error, err);
      ++res.checked;
      if (!(err <= opt.atol + opt.rtol * std::abs(num))) {
        res.ok = false;
        if (reported++ < 5)
          res.report += fmt::format("input {} element {}: numerical {:.10g}, analytic {:.10g}\n", i,
                                    j, num, a[size_t(j)]);
      }
    }
  }
  return res;
}

}  // namespace forge
