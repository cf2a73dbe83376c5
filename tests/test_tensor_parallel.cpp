// The tensor-parallel layers against their serial twins: each rank loads its slice of a serial
// layer's weights, runs the same input, and must produce the serial output and the serial gradients
// (its slice of them). The world is the tensor-parallel group: 1 rank in the unit suite, 2 and 4
// under mpirun. Also: splitting and merging serial tensors, and vocab-parallel cross-entropy's
// gradcheck.
#include "autograd/gradcheck.h"
#include "parallel/tensor_parallel.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;
using forge::testing::max_rel_diff;

namespace {

constexpr double kTol = 1e-5;  // f32 products summed in another order

Tensor shard(const Variable& v, TpSplit split, const Communicator& tp) {
  return shard_tensor(v.data(), split, tp.rank(), tp.size());
}
Tensor shard_grad(const Variable& v, TpSplit split, const Communicator& tp) {
  return shard_tensor(v.grad(), split, tp.rank(), tp.size());
}

// Every rank's data is the same: drawn from generators with fixed seeds.
Tensor upstream(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return randn(s, g);
}

}  // namespace

TEST_CASE("shard_tensor and merge_shards cut and rebuild a tensor, blocks and uneven slices") {
  Generator g(1);
  Tensor w = randn({12, 5}, g);
  for (int R : {1, 2, 3, 4}) {
    for (TpSplit split : {TpSplit{0, 1}, TpSplit{0, 3}, TpSplit{1, 1}, TpSplit{}}) {
      INFO(R << " ranks, dim " << split.dim << " chunks " << split.chunks);
      std::vector<Tensor> parts;
      for (int r = 0; r < R; ++r) parts.push_back(shard_tensor(w, split, r, R));
      CHECK(testing::bitwise_equal(merge_shards(parts, split), w));
    }
  }
  // Fused q, k, v over 2 ranks: rank 1 holds rows 2-3 of each block of 4.
  Tensor qkv = arange(0, 12, 1, DType::f32);
  CHECK(shard_tensor(qkv, {0, 3}, 1, 2).to_vector<float>() ==
        std::vector<float>{2, 3, 6, 7, 10, 11});
  // Uneven: 5 rows over 2 ranks are 2 + 3.
  CHECK(shard_tensor(w, {1, 1}, 0, 2).shape() == Shape({12, 2}));
  CHECK(shard_tensor(w, {1, 1}, 1, 2).shape() == Shape({12, 3}));
  REQUIRE_THROWS_WITH(shard_tensor(w, {1, 3}, 0, 2), Contains("shard_tensor") && Contains("3"));
}

TEST_CASE("ColumnParallelLinear equals Linear, output split or gathered, with gradients") {
  auto tp = world_communicator();
  const int64_t in = 6, out = 8;
  for (bool gather : {false, true}) {
    INFO("gather_output " << gather);
    Generator g(2);
    Linear serial(in, out, true, g);
    ColumnParallelLinear par(in, out, true, tp, gather);
    par.weight.data().copy_(shard(serial.weight, {0, 1}, *tp));
    par.bias.data().copy_(shard(serial.bias, {0, 1}, *tp));
    Tensor x = upstream({3, 4, in}, 3), c = upstream({3, 4, out}, 4);
    Variable xs(x, true), xp(x, true);
    Variable ys = serial.forward(xs), yp = par.forward(xp);
    sum(mul(ys, Variable(c))).backward();
    // The split output's upstream gradient is this rank's columns of c.
    Tensor cp = gather ? c : shard_tensor(c, {2, 1}, tp->rank(), tp->size());
    sum(mul(yp, Variable(cp))).backward();
    CHECK(max_rel_diff(yp.data(), gather ? ys.data() : shard(ys, {2, 1}, *tp)) <= kTol);
    CHECK(max_rel_diff(xp.grad(), xs.grad()) <= kTol);  // summed over the group
    CHECK(max_rel_diff(par.weight.grad(), shard_grad(serial.weight, {0, 1}, *tp)) <= kTol);
    CHECK(max_rel_diff(par.bias.grad(), shard_grad(serial.bias, {0, 1}, *tp)) <= kTol);
  }
  if (tp->size() > 1)
    REQUIRE_THROWS_WITH(ColumnParallelLinear(4, 4 * tp->size() + 1, true, tp),
                        Contains("ColumnParallelLinear") && Contains("output features"));
}

TEST_CASE("RowParallelLinear equals Linear, input split or whole, bias added once") {
  auto tp = world_communicator();
  const int64_t in = 8, out = 5;
  for (bool input_parallel : {true, false}) {
    INFO("input_is_parallel " << input_parallel);
    Generator g(5);
    Linear serial(in, out, true, g);
    RowParallelLinear par(in, out, true, tp, input_parallel);
    par.weight.data().copy_(shard(serial.weight, {1, 1}, *tp));
    par.bias.data().copy_(serial.bias.data());
    Tensor x = upstream({3, in}, 6), c = upstream({3, out}, 7);
    Variable xs(x, true);
    Variable xp(input_parallel ? shard_tensor(x, {1, 1}, tp->rank(), tp->size()) : x, true);
    Variable ys = serial.forward(xs), yp = par.forward(xp);
    sum(mul(ys, Variable(c))).backward();
    sum(mul(yp, Variable(c))).backward();
    CHECK(max_rel_diff(yp.data(), ys.data()) <= kTol);
    CHECK(max_rel_diff(xp.grad(), input_parallel ? shard_grad(xs, {1, 1}, *tp) : xs.grad()) <=
          kTol);
    CHECK(max_rel_diff(par.weight.grad(), shard_grad(serial.weight, {1, 1}, *tp)) <= kTol);
    CHECK(max_rel_diff(par.bias.grad(), serial.bias.grad()) <= kTol);
  }
}

TEST_CASE("VocabParallelEmbedding equals Embedding over an uneven split of the rows") {
  auto tp = world_communicator();
  const int64_t V = 13, C = 4;  // 13 rows: uneven over 2 and 4 ranks
  Generator g(8);
  Embedding serial(V, C, g);
  VocabParallelEmbedding par(V, C, tp);
  CHECK(par.range().size() == shard_range(V, tp->size(), tp->rank()).size());
  par.weight.data().copy_(shard(serial.weight, {0, 1}, *tp));
  Tensor idx = from_vector<int64_t>({0, 12, 5, 5, 7, 1, 12, 3}).view({2, 4});
  Tensor c = upstream({2, 4, C}, 9);
  Variable ys = serial.forward(idx), yp = par.forward(idx);
  sum(mul(ys, Variable(c))).backward();
  sum(mul(yp, Variable(c))).backward();
  CHECK(testing::bitwise_equal(yp.data(), ys.data()));  // one rank contributes each row exactly
  CHECK(max_rel_diff(par.weight.grad(), shard_grad(serial.weight, {0, 1}, *tp)) <= 1e-6);
  REQUIRE_THROWS_WITH(par.forward(from_vector<int64_t>({3, 13})),
                      Contains("index 13 at position 1") && Contains("13 rows"));
}

TEST_CASE("vocab_parallel_cross_entropy equals cross_entropy over the whole vocabulary") {
  auto tp = world_communicator();
  const int64_t N = 10, V = 11;
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    Generator g(10);
    Tensor logits = mul(randn({N, V}, g, dt), 3.0);
    // Two rows ignored (-100), as cross_entropy ignores them.
    Tensor targets = from_vector<int64_t>({0, 10, 3, -100, 5, 9, 1, 2, -100, 10});
    Variable xs(logits, true);
    Variable ls = cross_entropy(xs, targets);
    ls.backward();
    const IndexRange vocab = shard_range(V, tp->size(), tp->rank());
    Variable xp(logits.narrow(1, vocab.begin, vocab.size()).contiguous(), true);
    Variable lp = vocab_parallel_cross_entropy(xp, targets, vocab, V, tp);
    mul(lp, 2.0).backward();  // the upstream gradient is applied
    const double tol = dt == DType::f64 ? 1e-12 : 1e-6;
    CHECK(std::abs(lp.item() - ls.item()) <= tol * std::abs(ls.item()));
    CHECK(max_rel_diff(xp.grad(), mul(xs.grad(), 2.0).narrow(1, vocab.begin, vocab.size())) <= tol);
  }
  Variable bad(zeros({4, 3}), true);
  REQUIRE_THROWS_WITH(vocab_parallel_cross_entropy(bad, zeros({4}, DType::i64), {0, 5}, 5, tp),
                      Contains("vocab_parallel_cross_entropy") && Contains("3 columns"));
  Variable ok(zeros({4, 3}), true);
  REQUIRE_THROWS_WITH(vocab_parallel_cross_entropy(ok, from_vector<int64_t>({0, 1, 7, 2}), {0, 3},
                                                   3, single_process_communicator()),
                      Contains("target 7 at row 2") && Contains("3 classes"));
}

TEST_CASE("gradcheck: vocab_parallel_cross_entropy (one rank)") {
  auto one = single_process_communicator();
  Generator g(11);
  Tensor targets = from_vector<int64_t>({2, 0, 4, 1});
  auto r = gradcheck(
      [&](const std::vector<Variable>& v) {
        return vocab_parallel_cross_entropy(v[0], targets, {0, 5}, 5, one);
      },
      {randn({4, 5}, g, DType::f64)});
  INFO(r.report);
  CHECK(r.ok);
}

TEST_CASE("attention and MLP from tensor-parallel layers equal the serial ones, dropout included") {
  auto tp = world_communicator();
  const GPTConfig cfg{.n_layer = 1,
                      .n_head = 4,
                      .n_embd = 16,
                      .block_size = 8,
                      .vocab_size = 10,
                      .dropout = 0.2,
                      .bias = true};
  Generator init(12);
  Tensor x = upstream({2, 8, 16}, 13), c = upstream({2, 8, 16}, 14);
  // Each rank's slices of a serial module's weights, split as the GPT's are.
  auto load_shards = [&](Module& par, const Module& ser, const std::string& prefix) {
    NamedTensors mine;
    for (auto& [n, t] : ser.state_dict())
      mine.emplace_back(n, shard_tensor(t, gpt_tp_split(prefix + n), tp->rank(), tp->size()));
    par.load_state_dict(mine);
  };

  GptLayers serial_layers;
  TensorParallelLayers tp_layers(tp);
  auto randomise = [&](Module& m) {
    for (auto& [n, p] : m.named_parameters()) normal_(p.data(), 0.0, 0.2, init);
  };
  // Attention: the serial one's dropout generator and each rank's start in the same state.
  Generator ds(15), dp(15);
  CausalSelfAttention sa(cfg, serial_layers, ds);
  CausalSelfAttention pa(cfg, tp_layers, dp);
  randomise(sa);
  load_shards(pa, sa, "transformer.h.0.attn.");
  Variable xs(x, true), xp(x, true);
  Variable ys = sa.forward(xs), yp = pa.forward(xp);
  sum(mul(ys, Variable(c))).backward();
  sum(mul(yp, Variable(c))).backward();
  CHECK(max_rel_diff(yp.data(), ys.data()) <= kTol);
  CHECK(max_rel_diff(xp.grad(), xs.grad()) <= kTol);
  CHECK(max_rel_diff(pa.c_attn->weight.grad(), shard_grad(sa.c_attn->weight, {0, 3}, *tp)) <= kTol);
  CHECK(max_rel_diff(pa.c_proj->weight.grad(), shard_grad(sa.c_proj->weight, {1, 1}, *tp)) <= kTol);
  CHECK(ds.state() == dp.state());  // every rank drew the whole mask's worth

  // MLP.
  GPTMLP sm(cfg, serial_layers, ds);
  GPTMLP pm(cfg, tp_layers, dp);
  randomise(sm);
  load_shards(pm, sm, "transformer.h.0.mlp.");
  Variable xs2(x, true), xp2(x, true);
  Variable ys2 = sm.forward(xs2), yp2 = pm.forward(xp2);
  sum(mul(ys2, Variable(c))).backward();
  sum(mul(yp2, Variable(c))).backward();
  CHECK(max_rel_diff(yp2.data(), ys2.data()) <= kTol);
  CHECK(max_rel_diff(xp2.grad(), xs2.grad()) <= kTol);
  CHECK(max_rel_diff(pm.c_fc->weight.grad(), shard_grad(sm.c_fc->weight, {0, 1}, *tp)) <= kTol);
  CHECK(max_rel_diff(pm.c_fc->bias.grad(), shard_grad(sm.c_fc->bias, {0, 1}, *tp)) <= kTol);
  CHECK(max_rel_diff(pm.c_proj->bias.grad(), sm.c_proj->bias.grad()) <= kTol);
}
