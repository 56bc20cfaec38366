// FP16 and BF16 on the CPU backend: the conversions of core/half.hpp (exhaustively where the
// domain is 65536 values, against an independent nearest-value reference and the F16C hardware
// otherwise), low-precision kernels that round exactly once, GEMMs on rounded operands, fp16
// overflow, and the gradient underflow that loss scaling exists to prevent.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "core/half.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MIXTRAIN_TEST_F16C 1
#endif

namespace mixtrain {
namespace {

// ---------------------------------------------------------------------------------------------
// Independent references

// The value of a binary16 code, from the definition: (-1)^s * 2^(e-15) * (1 + m/1024), or
// 2^-14 * m/1024 for subnormals.
double f16_value(std::uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 0x1F, m = h & 0x3FF;
  double v;
  if (e == 0x1F) {
    v = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    v = std::ldexp(m, -24);
  } else {
    v = std::ldexp(1024 + m, e - 25);
  }
  return s != 0 ? -v : v;
}

bool f16_is_nan(std::uint16_t h) {
  return (h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0;
}
bool bf16_is_nan(std::uint16_t b) {
  return (b & 0x7F80) == 0x7F80 && (b & 0x7F) != 0;
}

// Round to nearest binary16, ties to even, by search over the 31744 finite non-negative codes
// (ordered like their values): no bit tricks shared with the code under test.
std::uint16_t f16_reference(float x) {
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (std::isnan(x)) return 0x7E00 | sign;
  const double a = std::fabs(static_cast<double>(x));
  // 65520 is halfway between 65504 (odd code 0x7BFF) and 65536 (2^16, "even", unrepresentable):
  // from there on, round to nearest even gives inf.
  if (a >= 65520.0) return 0x7C00 | sign;
  std::uint16_t lo = 0, hi = 0x7BFF;  // largest code with value <= a
  while (lo < hi) {
    const auto mid = static_cast<std::uint16_t>((lo + hi + 1) / 2);
    if (f16_value(mid) <= a) {
      lo = mid;
    } else {
      hi = static_cast<std::uint16_t>(mid - 1);
    }
  }
  if (lo == 0x7BFF) return lo | sign;                                     // in [65504, 65520)
  const double below = a - f16_value(lo), above = f16_value(lo + 1) - a;  // both exact
  const bool up = above < below || (above == below && (lo & 1) != 0);
  return static_cast<std::uint16_t>((up ? lo + 1 : lo) | sign);
}

// Round to nearest bfloat16 (the upper half of a float), ties to even, by comparing with the two
// neighbouring bfloat16 values in double.
std::uint16_t bf16_reference(float x) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  const auto lo = static_cast<std::uint16_t>(bits >> 16);  // truncation: toward zero
  if ((bits & 0xFFFF) == 0) return lo;
  const double v = std::fabs(static_cast<double>(x));
  const double below = std::fabs(static_cast<double>(bf16_to_float(lo)));
  const std::uint32_t next = (static_cast<std::uint32_t>(lo) + 1) << 16;  // away from zero
  // The next magnitude; past the largest finite bf16 it is 2^128, which rounds to inf.
  const double above = (next & 0x7F800000u) == 0x7F800000u
                           ? std::ldexp(1.0, 128)
                           : std::fabs(static_cast<double>(std::bit_cast<float>(next)));
  const bool up = (above - v) < (v - below) || ((above - v) == (v - below) && (lo & 1) != 0);
  return static_cast<std::uint16_t>(up ? lo + 1 : lo);
}

#ifdef MIXTRAIN_TEST_F16C
// The tests are not compiled for F16C (only the library is), so the instructions are enabled per
// function and used only when the CPU has them.
__attribute__((target("f16c"))) std::uint16_t hw_float_to_f16(float x) {
  return static_cast<std::uint16_t>(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("f16c"))) float hw_f16_to_float(std::uint16_t h) {
  return _cvtsh_ss(h);
}
bool have_f16c() {
  return __builtin_cpu_supports("f16c") != 0;
}
#endif

// Floats that stress fp16 rounding: around the overflow threshold, the subnormal range, and
// exact ties (the midpoint of two neighbouring halves is exact in float), plus random bits.
std::vector<float> f16_probe_floats(std::size_t random_count) {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          65504.0f,
                          65519.99f,
                          std::nextafter(65520.0f, 0.0f),
                          65520.0f,
                          -65520.0f,
                          65536.0f,
                          1e9f,
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::denorm_min(),
                          std::ldexp(1.0f, -24),
                          std::ldexp(1.0f, -25),
                          std::ldexp(1.5f, -25),
                          std::ldexp(3.0f, -25),
                          std::ldexp(1.0f, -14),
                          std::ldexp(1023.0f, -24),
                          std::ldexp(2047.0f, -25)};
  for (std::uint32_t h = 0; h < 0x7BFF; ++h) {  // every tie, and one float ulp either side
    const float mid = static_cast<float>(
        (f16_value(static_cast<std::uint16_t>(h)) + f16_value(static_cast<std::uint16_t>(h + 1))) /
        2);
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
      v.push_back(x);
      v.push_back(-x);
    }
  }
  std::mt19937_64 rng(2024);
  for (std::size_t i = 0; i < random_count; ++i) {
    const std::uint64_t r = rng();
    if (i % 2 == 0) {  // any float
      v.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(r)));
    } else {  // magnitudes 2^-26 .. 2^17: where fp16 has codes
      const auto m = static_cast<std::uint32_t>(r & 0x7FFFFF);
      const auto e = static_cast<std::uint32_t>(101 + (r >> 23) % 43);
      const auto sign = static_cast<std::uint32_t>((r >> 40) & 1);
      v.push_back(std::bit_cast<float>(sign << 31 | e << 23 | m));
    }
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Conversions

TEST(HalfConversion, F16ToFloatExhaustive) {
#ifdef MIXTRAIN_TEST_F16C
  const bool hw = have_f16c();
#else
  const bool hw = false;
#endif
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<std::uint16_t>(i);
    const float got = f16_to_float(h);
    if (f16_is_nan(h)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << i;
      EXPECT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << i;
      continue;
    }
    // Every half is exact in float (and double): the widening must be exact, -0 included.
    EXPECT_EQ(std::bit_cast<std::uint32_t>(got),
              std::bit_cast<std::uint32_t>(static_cast<float>(f16_value(h))))
        << std::hex << i;
    // And the conversion back is the identity.
    EXPECT_EQ(float_to_f16(got), h) << std::hex << i;
#ifdef MIXTRAIN_TEST_F16C
    if (hw) {
      EXPECT_EQ(std::bit_cast<std::uint32_t>(got), std::bit_cast<std::uint32_t>(hw_f16_to_float(h)))
          << std::hex << i;
    }
#endif
  }
  if (!hw) GTEST_LOG_(INFO) << "no F16C: the hardware comparison was skipped";
}

TEST(HalfConversion, FloatToF16KnownValues) {
  struct Case {
    float x;
    std::uint16_t h;
  };
  const Case cases[] = {
      {1.0f, 0x3C00},
      {-2.0f, 0xC000},
      {0.1f, 0x2E66},
      {65504.0f, 0x7BFF},                                // largest finite half
      {65519.99f, 0x7BFF},                               // below the overflow threshold
      {65520.0f, 0x7C00},                                // halfway to 2^16: rounds to inf
      {-65520.0f, 0xFC00},                               //
      {1e6f, 0x7C00},                                    //
      {std::numeric_limits<float>::infinity(), 0x7C00},  //
      {-0.0f, 0x8000},                                   //
      {std::ldexp(1.0f, -14), 0x0400},                   // smallest normal
      {std::ldexp(1023.0f, -24), 0x03FF},                // largest subnormal
      {std::ldexp(1.0f, -24), 0x0001},                   // smallest subnormal
      {std::ldexp(1.0f, -25), 0x0000},                   // tie between 0 and 2^-24: even
      {std::nextafter(std::ldexp(1.0f, -25), 1.0f), 0x0001},
      {std::ldexp(3.0f, -25), 0x0002},         // tie between codes 1 and 2: even (2)
      {std::ldexp(5.0f, -25), 0x0002},         // tie between codes 2 and 3: even (2)
      {1.0f + std::ldexp(1.0f, -11), 0x3C00},  // tie between 1 and 1 + 2^-10: even (1)
      {1.0f + std::ldexp(3.0f, -11), 0x3C02},  // tie between codes 0x3C01 and 0x3C02: even
      {2047.0f / 1024.0f + std::ldexp(1.0f, -11), 0x4000},  // tie rounding up into 2.0
      {1e-10f, 0x0000},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(float_to_f16(c.x), c.h) << c.x << " (" << std::hexfloat << c.x << ")";
    EXPECT_EQ(f16_reference(c.x), c.h) << "reference: " << c.x;
  }
  const std::uint16_t nan = float_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(f16_is_nan(nan));
  // A signalling nan whose payload lives only in the low float bits must stay a nan, not inf.
  EXPECT_TRUE(f16_is_nan(float_to_f16(std::bit_cast<float>(0x7F800001u))));
  EXPECT_TRUE(f16_is_nan(float_to_f16(std::bit_cast<float>(0xFF800001u))));
}

TEST(HalfConversion, FloatToF16MatchesReferenceAndHardware) {
  const std::vector<float> probes = f16_probe_floats(1000000);
#ifdef MIXTRAIN_TEST_F16C
  const bool hw = have_f16c();
#else
  const bool hw = false;
#endif
  int failures = 0;
  for (float x : probes) {
    const std::uint16_t got = float_to_f16(x);
    const std::uint16_t want = f16_reference(x);
    bool ok = std::isnan(x) ? f16_is_nan(got) && (got & 0x8000) == (want & 0x8000) : got == want;
#ifdef MIXTRAIN_TEST_F16C
    if (hw) {
      const std::uint16_t h = hw_float_to_f16(x);  // the hardware keeps nan payloads; we do not
      ok = ok && (std::isnan(x) ? f16_is_nan(h) : h == got);
    }
#endif
    if (!ok && failures++ < 10) {
      ADD_FAILURE() << std::hexfloat << x << ": got 0x" << std::hex << got << ", reference 0x"
                    << want;
    }
  }
  EXPECT_EQ(failures, 0) << "of " << probes.size();
  if (!hw) GTEST_LOG_(INFO) << "no F16C: the hardware comparison was skipped";
}

TEST(HalfConversion, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);  // tie: even (1)
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(3.0f, -8)), 0x3F82);  // tie: even (0x3F82)
  EXPECT_EQ(float_to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)), 0x3F81);
  EXPECT_EQ(float_to_bf16(-1.0f - std::ldexp(1.0f, -8)), 0xBF80);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds past max: inf
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(float_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(float_to_bf16(70000.0f), 0x4789);  // fp32's range: no overflow where fp16 has one
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::denorm_min()), 0x0000);  // tie: even
  // nan stays nan, whatever the payload, including payloads only in the low 16 bits (a plain
  // rounding would carry those into the exponent and make an inf).
  for (std::uint32_t bits : {0x7FC00000u, 0x7F800001u, 0x7F80FFFFu, 0xFFFFFFFFu, 0x7FFFFFFFu}) {
    const std::uint16_t b = float_to_bf16(std::bit_cast<float>(bits));
    EXPECT_TRUE(bf16_is_nan(b)) << std::hex << bits << " -> " << b;
    EXPECT_EQ(b & 0x8000, (bits >> 16) & 0x8000) << std::hex << bits;
  }
  // Every bf16 value survives the round trip; random floats match the reference.
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    if (bf16_is_nan(b)) continue;
    EXPECT_EQ(float_to_bf16(bf16_to_float(b)), b) << std::hex << i;
  }
  std::mt19937_64 rng(7);
  int failures = 0;
  for (int i = 0; i < 1000000; ++i) {
    float x = std::bit_cast<float>(static_cast<std::uint32_t>(rng()));
    if (i % 4 == 0) {  // an exact tie: low half 0x8000
      x = std::bit_cast<float>((std::bit_cast<std::uint32_t>(x) & 0xFFFF0000u) | 0x8000u);
    }
    if (std::isnan(x)) continue;
    if (float_to_bf16(x) != bf16_reference(x) && failures++ < 10) {
      ADD_FAILURE() << std::hexfloat << x << ": got 0x" << std::hex << float_to_bf16(x)
                    << ", reference 0x" << bf16_reference(x);
    }
  }
  EXPECT_EQ(failures, 0);
}

// ---------------------------------------------------------------------------------------------
// Kernels

template <typename T>
std::vector<T> all_codes() {
  std::vector<T> v(65536);
  for (std::uint32_t i = 0; i < 65536; ++i) v[i] = T{static_cast<std::uint16_t>(i)};
  return v;
}

// Low-precision element-wise kernels load, compute in fp32 and round once: on every one of the
// 65536 inputs, the result is exactly the backend's fp32 kernel on the widened input, rounded.
// (The reference is the library's own fp32 kernel, not this file's instantiation of the math,
// which could differ in the last fp32 bit where the compiler contracts a * b + c differently.)
template <typename T>
void check_activations_round_once(DType dt) {
  cpu::CpuBackend be;
  const std::vector<T> x = all_codes<T>();
  const std::int64_t n = 65536;
  std::vector<T> y(x.size()), dx(x.size());
  const std::vector<T> dy(x.size(), store<T>(-1.25f));
  std::vector<float> x32(x.size()), y32(x.size()), dx32(x.size());
  const std::vector<float> dy32(x.size(), -1.25f);
  for (std::size_t i = 0; i < x.size(); ++i) x32[i] = load(x[i]);
  const float alphas[] = {0.0f, 0.01f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  for (int a = 0; a < 9; ++a) {
    const auto act = static_cast<Activation>(a);
    const float alpha = alphas[a];
    be.activation_forward(act, alpha, CBuf(x.data(), dt), Buf{y.data(), dt}, n);
    be.activation_backward(act, alpha, CBuf(x.data(), dt), CBuf(y.data(), dt), CBuf(dy.data(), dt),
                           Buf{dx.data(), dt}, n, false);
    be.activation_forward(act, alpha, CBuf(x32.data(), DType::F32), Buf{y32.data(), DType::F32}, n);
    be.activation_backward(act, alpha, CBuf(x32.data(), DType::F32), CBuf(y32.data(), DType::F32),
                           CBuf(dy32.data(), DType::F32), Buf{dx32.data(), DType::F32}, n, false);
    int failures = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (std::isnan(x32[i])) continue;
      const T want_y = store<T>(y32[i]);
      const T want_dx = store<T>(dx32[i]);
      const bool ok_y =
          y[i].bits == want_y.bits || (std::isnan(load(y[i])) && std::isnan(load(want_y)));
      const bool ok_dx =
          dx[i].bits == want_dx.bits || (std::isnan(load(dx[i])) && std::isnan(load(want_dx)));
      if ((!ok_y || !ok_dx) && failures++ < 5) {
        ADD_FAILURE() << dtype_name(dt) << " activation " << a << " at " << x32[i] << ": y 0x"
                      << std::hex << y[i].bits << " vs 0x" << want_y.bits << ", dx 0x" << dx[i].bits
                      << " vs 0x" << want_dx.bits;
      }
    }
  }
}

// The fp32 kernels (the reference of the tests below) against the F64 ones, over the 63488
// finite fp16 values as inputs (2^-24 to 65504, both signs): within 8 fp32 ulps of
// max(1, |value|, |x|). The |x| allows for the cancellation the fp32 formulas carry, such as
// x * s * (1 - s) in Swish's derivative, where 1 - s is only known to eps.
TEST(LowPrecisionKernels, Fp32ActivationsAgreeWithFloat64) {
  cpu::CpuBackend be;
  std::vector<float> x32;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const float v = f16_to_float(static_cast<std::uint16_t>(i));
    if (std::isfinite(v)) x32.push_back(v);
  }
  const auto n = static_cast<std::int64_t>(x32.size());
  std::vector<double> x64(x32.begin(), x32.end()), y64(x32.size()), dx64(x32.size());
  std::vector<float> y32(x32.size()), dx32(x32.size());
  const std::vector<float> dy32(x32.size(), 1.0f);
  const std::vector<double> dy64(x32.size(), 1.0);
  const float alphas[] = {0.0f, 0.01f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  for (int a = 0; a < 9; ++a) {
    const auto act = static_cast<Activation>(a);
    be.activation_forward(act, alphas[a], CBuf(x32.data(), DType::F32), Buf{y32.data(), DType::F32},
                          n);
    be.activation_backward(act, alphas[a], CBuf(x32.data(), DType::F32),
                           CBuf(y32.data(), DType::F32), CBuf(dy32.data(), DType::F32),
                           Buf{dx32.data(), DType::F32}, n, false);
    be.activation_forward(act, alphas[a], CBuf(x64.data(), DType::F64), Buf{y64.data(), DType::F64},
                          n);
    be.activation_backward(act, alphas[a], CBuf(x64.data(), DType::F64),
                           CBuf(y64.data(), DType::F64), CBuf(dy64.data(), DType::F64),
                           Buf{dx64.data(), DType::F64}, n, false);
    int failures = 0;
    for (std::size_t i = 0; i < x32.size(); ++i) {
      const double tol_y =
          8 * dtype_epsilon(DType::F32) * std::max({1.0, std::fabs(y64[i]), std::fabs(x64[i])});
      const double tol_dx =
          8 * dtype_epsilon(DType::F32) * std::max({1.0, std::fabs(dx64[i]), std::fabs(x64[i])});
      if ((!(std::fabs(y32[i] - y64[i]) <= tol_y) || !(std::fabs(dx32[i] - dx64[i]) <= tol_dx)) &&
          failures++ < 5) {
        ADD_FAILURE() << "activation " << a << " at " << x32[i] << ": y " << y32[i] << " vs "
                      << y64[i] << ", dy/dx " << dx32[i] << " vs " << dx64[i];
      }
    }
  }
}

TEST(LowPrecisionKernels, ActivationsRoundOnceF16) {
  check_activations_round_once<f16>(DType::F16);
}
TEST(LowPrecisionKernels, ActivationsRoundOnceBf16) {
  check_activations_round_once<bf16>(DType::BF16);
}

// A GEMM with fp16/bf16 operands equals the fp32 GEMM of the rounded operands, rounded once.
// Integer-valued inputs make every product and partial sum exact in fp32, so the reference is
// exact whatever order OpenBLAS sums in; the outputs reach 2^13, where fp16 spacing is 8, so the
// final rounding is exercised, and n = 13 runs both the 8-wide vector rounding and the scalar
// tail.
template <typename T>
void check_integer_gemm(DType dt) {
  cpu::CpuBackend be;
  std::mt19937_64 rng(3);
  constexpr int kM = 5, kN = 13, kK = 9;
  for (int variant = 0; variant < 6; ++variant) {
    SCOPED_TRACE("variant " + std::to_string(variant));
    const bool ta = (variant & 1) != 0, tb = (variant & 2) != 0, with_bias = variant == 4;
    const bool with_beta = variant == 5;
    std::vector<float> a(kM * kK), b(kK * kN), bias(kN), c0(kM * kN);
    auto draw = [&](float lim) {
      return static_cast<float>(static_cast<int>(rng() % (2 * static_cast<int>(lim) + 1)) -
                                static_cast<int>(lim));
    };
    for (float& v : a) v = draw(40);
    for (float& v : b) v = draw(30);
    for (float& v : bias) v = draw(200);
    for (float& v : c0) v = draw(100) * 2;
    std::vector<T> a16(a.size()), b16(b.size()), bias16(bias.size()), c16(c0.size());
    // Stored row-major as op(A) = A^T when transposed: element (i, p) of op(A) lives at [p][i].
    for (int i = 0; i < kM; ++i) {
      for (int p = 0; p < kK; ++p) {
        a16[static_cast<std::size_t>(ta ? p * kM + i : i * kK + p)] =
            store<T>(a[static_cast<std::size_t>(i * kK + p)]);
      }
    }
    for (int p = 0; p < kK; ++p) {
      for (int j = 0; j < kN; ++j) {
        b16[static_cast<std::size_t>(tb ? j * kK + p : p * kN + j)] =
            store<T>(b[static_cast<std::size_t>(p * kN + j)]);
      }
    }
    for (std::size_t j = 0; j < bias.size(); ++j) bias16[j] = store<T>(bias[j]);
    for (std::size_t i = 0; i < c0.size(); ++i) c16[i] = store<T>(c0[i]);
    GemmDesc g;
    g.trans_a = ta;
    g.trans_b = tb;
    g.m = kM;
    g.n = kN;
    g.k = kK;
    g.a = CBuf(a16.data(), dt);
    g.lda = ta ? kM : kK;
    g.b = CBuf(b16.data(), dt);
    g.ldb = tb ? kK : kN;
    g.c = Buf{c16.data(), dt};
    g.ldc = kN;
    g.alpha = 1.0f;
    g.beta = with_beta ? 0.5f : 0.0f;
    if (with_bias) g.bias = CBuf(bias16.data(), dt);
    be.gemm(g);
    for (int i = 0; i < kM; ++i) {
      for (int j = 0; j < kN; ++j) {
        // Exact: the integers (|v| <= 200) are exact in fp16 and bf16, every partial sum is an
        // integer below 2^24.
        double acc = 0.0;
        for (int p = 0; p < kK; ++p) {
          acc += static_cast<double>(a[static_cast<std::size_t>(i * kK + p)]) *
                 b[static_cast<std::size_t>(p * kN + j)];
        }
        if (with_bias) acc += bias[static_cast<std::size_t>(j)];
        if (with_beta) acc += 0.5 * c0[static_cast<std::size_t>(i * kN + j)];
        const T want = store<T>(static_cast<float>(acc));
        EXPECT_EQ(c16[static_cast<std::size_t>(i * kN + j)].bits, want.bits)
            << dtype_name(dt) << " C[" << i << "][" << j << "] = " << acc;
      }
    }
  }
}

TEST(LowPrecisionKernels, GemmF16IntegerInputsExact) {
  check_integer_gemm<f16>(DType::F16);
}
TEST(LowPrecisionKernels, GemmBf16IntegerInputsExact) {
  check_integer_gemm<bf16>(DType::BF16);
}

// With arbitrary values: the fp16/bf16 GEMM equals the backend's own fp32 GEMM of the widened
// operands, bitwise, for an fp32 output (the weight-gradient path) and, after one rounding, for
// a low-precision output. Batched, so the strides are covered.
template <typename T>
void check_gemm_matches_fp32_of_rounded(DType dt) {
  cpu::CpuBackend be;
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  constexpr int kM = 7, kN = 19, kK = 33, kBatch = 2;
  std::vector<T> a(kBatch * kM * kK), b(kBatch * kK * kN), bias(kN);
  for (T& v : a) v = store<T>(normal(rng));
  for (T& v : b) v = store<T>(normal(rng));
  for (T& v : bias) v = store<T>(normal(rng));
  std::vector<float> a32(a.size()), b32(b.size()), bias32(bias.size());
  for (std::size_t i = 0; i < a.size(); ++i) a32[i] = load(a[i]);
  for (std::size_t i = 0; i < b.size(); ++i) b32[i] = load(b[i]);
  for (std::size_t i = 0; i < bias.size(); ++i) bias32[i] = load(bias[i]);
  auto desc = [&](CBuf pa, CBuf pb, Buf pc, CBuf pbias) {
    GemmDesc g;
    g.m = kM;
    g.n = kN;
    g.k = kK;
    g.a = pa;
    g.lda = kK;
    g.b = pb;
    g.ldb = kN;
    g.c = pc;
    g.ldc = kN;
    g.alpha = 0.5f;
    g.bias = pbias;
    g.batch = kBatch;
    g.stride_a = kM * kK;
    g.stride_b = kK * kN;
    g.stride_c = kM * kN;
    return g;
  };
  for (bool with_bias : {false, true}) {
    SCOPED_TRACE(with_bias ? "bias" : "no bias");
    std::vector<float> ref(kBatch * kM * kN), product(ref.size()), wide_out(ref.size());
    std::vector<T> low_out(ref.size());
    be.gemm(desc(CBuf(a32.data(), DType::F32), CBuf(b32.data(), DType::F32),
                 Buf{ref.data(), DType::F32},
                 with_bias ? CBuf(bias32.data(), DType::F32) : CBuf()));
    be.gemm(desc(CBuf(a32.data(), DType::F32), CBuf(b32.data(), DType::F32),
                 Buf{product.data(), DType::F32}, CBuf()));
    be.gemm(desc(CBuf(a.data(), dt), CBuf(b.data(), dt), Buf{wide_out.data(), DType::F32},
                 with_bias ? CBuf(bias.data(), dt) : CBuf()));
    be.gemm(desc(CBuf(a.data(), dt), CBuf(b.data(), dt), Buf{low_out.data(), dt},
                 with_bias ? CBuf(bias.data(), dt) : CBuf()));
    for (std::size_t i = 0; i < ref.size(); ++i) {
      EXPECT_EQ(std::bit_cast<std::uint32_t>(wide_out[i]), std::bit_cast<std::uint32_t>(ref[i]))
          << i;
      // A low-precision output: the fp32 product, plus the bias in fp32, rounded once.
      const float acc = with_bias ? product[i] + bias32[i % kN] : product[i];
      EXPECT_EQ(low_out[i].bits, store<T>(acc).bits) << i << ": " << acc;
    }
  }
}

TEST(LowPrecisionKernels, GemmF16IsFp32GemmOfRoundedOperands) {
  check_gemm_matches_fp32_of_rounded<f16>(DType::F16);
}
TEST(LowPrecisionKernels, GemmBf16IsFp32GemmOfRoundedOperands) {
  check_gemm_matches_fp32_of_rounded<bf16>(DType::BF16);
}

// The library's bulk conversions (F16C-vectorised where it is built for it) agree with the scalar
// ones: an fp32 GEMM with C = 1 * B rounds every B element through the fp16 output path, and an
// fp16 GEMM with an fp32 output widens every code.
TEST(LowPrecisionKernels, BulkConversionsMatchScalar) {
  cpu::CpuBackend be;
  const std::vector<float> probes = f16_probe_floats(200000);
  const auto n = static_cast<std::int64_t>(probes.size());
  const float one = 1.0f;
  std::vector<f16> narrowed(probes.size());
  GemmDesc g;
  g.m = 1;
  g.n = n;
  g.k = 1;
  g.a = CBuf(&one, DType::F32);
  g.lda = 1;
  g.b = CBuf(probes.data(), DType::F32);
  g.ldb = n;
  g.c = Buf{narrowed.data(), DType::F16};
  g.ldc = n;
  be.gemm(g);
  int failures = 0;
  for (std::size_t i = 0; i < probes.size(); ++i) {
    const std::uint16_t want = float_to_f16(probes[i]);
    const std::uint16_t got = narrowed[i].bits;
    // 0 * C + 1 * (-0) may come out +0: the sign of a zero is not part of this check.
    const bool ok = std::isnan(probes[i]) ? f16_is_nan(got)
                    : probes[i] == 0.0f   ? (got & 0x7FFF) == 0
                                          : got == want;
    if (!ok && failures++ < 10) {
      ADD_FAILURE() << std::hexfloat << probes[i] << ": 0x" << std::hex << narrowed[i].bits
                    << " vs 0x" << want;
    }
  }
  EXPECT_EQ(failures, 0);

  const std::vector<f16> codes = all_codes<f16>();
  const f16 one16 = store<f16>(1.0f);
  std::vector<float> widened(codes.size());
  g.n = 65536;
  g.a = CBuf(&one16, DType::F16);
  g.b = CBuf(codes.data(), DType::F16);
  g.ldb = 65536;
  g.c = Buf{widened.data(), DType::F32};
  g.ldc = 65536;
  be.gemm(g);
  for (std::size_t i = 0; i < codes.size(); ++i) {
    if (f16_is_nan(codes[i].bits)) {
      EXPECT_TRUE(std::isnan(widened[i])) << i;
    } else if ((codes[i].bits & 0x7FFF) == 0) {
      EXPECT_EQ(widened[i], 0.0f) << i;
    } else {
      EXPECT_EQ(std::bit_cast<std::uint32_t>(widened[i]),
                std::bit_cast<std::uint32_t>(f16_to_float(codes[i].bits)))
          << std::hex << i;
    }
  }
}

TEST(LowPrecisionKernels, ConvertToF16OverflowsToInf) {
  cpu::CpuBackend be;
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> in = {65504.0f, 65519.99f, 65520.0f, 70000.0f, -1e5f, 3.0e38f,
                                 inf,      -inf,      1e-8f,    -1e-8f,   0.5f};
  const std::vector<std::uint16_t> want = {0x7BFF, 0x7BFF, 0x7C00, 0x7C00, 0xFC00, 0x7C00,
                                           0x7C00, 0xFC00, 0x0000, 0x8000, 0x3800};
  std::vector<f16> out(in.size());
  be.convert(CBuf(in.data(), DType::F32), Buf{out.data(), DType::F16},
             static_cast<std::int64_t>(in.size()), false);
  for (std::size_t i = 0; i < in.size(); ++i) EXPECT_EQ(out[i].bits, want[i]) << in[i];
  // Accumulating in fp16 overflows the same way: 40000 + 40000 is inf.
  std::vector<f16> acc(1, store<f16>(40000.0f));
  const float add = 40000.0f;
  be.convert(CBuf(&add, DType::F32), Buf{acc.data(), DType::F16}, 1, true);
  EXPECT_EQ(acc[0].bits, 0x7C00);
  // bf16 has fp32's exponent range: no overflow.
  std::vector<bf16> wide(in.size());
  be.convert(CBuf(in.data(), DType::F32), Buf{wide.data(), DType::BF16},
             static_cast<std::int64_t>(in.size()), false);
  EXPECT_TRUE(std::isfinite(load(wide[3])));
  EXPECT_EQ(load(wide[3]), 70144.0f);  // 70000 to 8 significant bits
}

// Why loss scaling exists. An MSE gradient 2 (p - t) / N with p - t = 2^-12 and N = 2^16 is
// 2^-27: below half the smallest fp16 subnormal (2^-24), so stored in fp16 it becomes 0 and the
// step learns nothing. Scaled by 1024 it is 2^-17, an exact fp16 subnormal, and unscaling in fp32
// recovers 2^-27 exactly. bf16, with fp32's exponent range, keeps it unscaled.
TEST(LossScaling, SmallGradientUnderflowsInF16WithoutScale) {
  cpu::CpuBackend be;
  constexpr std::int64_t kRows = 256, kCols = 256;
  const auto n = static_cast<std::size_t>(kRows * kCols);
  const float p = 0.5f, t = 0.5f - std::ldexp(1.0f, -12);
  const std::vector<float> targets(n, t);
  const float want = std::ldexp(1.0f, -27);
  auto gradient = [&](DType dt, float scale, auto tag) {
    using T = decltype(tag);
    const std::vector<T> pred(n, store<T>(p));
    std::vector<T> grad(n, store<T>(99.0f));
    StepControl control{};
    control.loss_scale = scale;
    control.inv_scale = 1.0f / scale;
    float loss = -1.0f;
    LossDesc d;
    d.kind = LossKind::MeanSquaredError;
    d.pred = CBuf(pred.data(), dt);
    d.rows = kRows;
    d.cols = kCols;
    d.targets = targets.data();
    d.loss = &loss;
    d.dpred = Buf{grad.data(), dt};
    d.control = &control;
    be.loss(d);
    EXPECT_EQ(loss, std::ldexp(1.0f, -24));  // (2^-12)^2, unscaled
    for (std::size_t i = 1; i < n; ++i) EXPECT_EQ(load(grad[i]), load(grad[0])) << i;
    return load(grad[0]) * control.inv_scale;  // the trainer's fp32 unscale
  };
  EXPECT_EQ(gradient(DType::F32, 1.0f, float{}), want);
  EXPECT_EQ(gradient(DType::F16, 1.0f, f16{}), 0.0f);  // underflow: the gradient is lost
  EXPECT_EQ(gradient(DType::F16, 1024.0f, f16{}), want);
  EXPECT_EQ(gradient(DType::BF16, 1.0f, bf16{}), want);
}

}  // namespace
}  // namespace mixtrain
