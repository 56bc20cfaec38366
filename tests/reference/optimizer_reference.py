#!/usr/bin/env python3
"""Reference trajectories for tests/test_optimizers.cpp.

An independent float64 implementation of the optimizer rules, following the definitions of
torch.optim (SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, NAdam), plus the coupled L2 weight
decay g += weight_decay * p that mixtrain applies for every optimizer (AdamW: after the decoupled
shrink). Plain Python, no third-party packages.

Inputs and hyper-parameters are first rounded to fp32, the precision the C++ side receives them
in, so the only difference left between the two is fp32 versus float64 arithmetic.

Usage: python3 tests/reference/optimizer_reference.py > tests/reference/optimizer_reference.inc
"""

import math
import struct

STEPS = 6
COUNT = 5


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


INITIAL = [0.8, -0.45, 0.3, 1.7, -1.2]
# One row per step; every row and column has a zero, positive and negative values appear.
GRADS = [
    [0.5, -1.1, 0.0, 2.0, -0.25],
    [0.3, -0.8, 0.15, 1.5, 0.0],
    [-0.2, -0.6, 0.0, 0.9, 0.45],
    [0.1, 0.35, -0.3, 0.0, -0.1],
    [0.0, 0.2, 0.25, -0.55, 0.3],
    [-0.4, 0.0, 0.6, -1.0, 0.2],
]

# Defaults of the C++ options structs (include/mixtrain/optim.hpp).
DEFAULTS = {
    "sgd": {"momentum": 0.0, "dampening": 0.0, "nesterov": False},
    "adam": {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
    "adamw": {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "decoupled_weight_decay": 0.01},
    "rmsprop": {"rho": 0.99, "epsilon": 1e-8, "momentum": 0.0, "centered": False},
    "adagrad": {"initial_accumulator": 0.0, "epsilon": 1e-10},
    "adadelta": {"rho": 0.9, "epsilon": 1e-6},
    "nadam": {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "momentum_decay": 4e-3},
}

ENUM = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "rmsprop": "RMSProp",
    "adagrad": "AdaGrad",
    "adadelta": "AdaDelta",
    "nadam": "Nadam",
}

# (name, optimizer, learning rate, coupled weight decay, options differing from the defaults)
CASES = [
    ("sgd_plain", "sgd", 0.1, 0.0, {}),
    ("sgd_momentum", "sgd", 0.03, 0.0, {"momentum": 0.9}),
    ("sgd_nesterov", "sgd", 0.03, 0.0, {"momentum": 0.9, "nesterov": True}),
    ("sgd_dampening_weight_decay", "sgd", 0.05, 0.05, {"momentum": 0.8, "dampening": 0.3}),
    ("adam", "adam", 0.01, 0.0, {}),
    ("adam_weight_decay", "adam", 0.02, 0.1, {"beta1": 0.8, "beta2": 0.99, "epsilon": 1e-6}),
    ("adamw", "adamw", 0.01, 0.0, {"decoupled_weight_decay": 0.1}),
    ("adamw_weight_decay", "adamw", 0.02, 0.05, {"beta2": 0.95, "decoupled_weight_decay": 0.2}),
    ("rmsprop", "rmsprop", 0.01, 0.0, {"rho": 0.9}),
    ("rmsprop_centered", "rmsprop", 0.01, 0.0, {"rho": 0.9, "centered": True}),
    ("rmsprop_momentum", "rmsprop", 0.01, 0.0, {"momentum": 0.9}),
    ("rmsprop_centered_momentum", "rmsprop", 0.005, 0.02,
     {"rho": 0.95, "momentum": 0.5, "centered": True}),
    ("adagrad", "adagrad", 0.1, 0.0, {"initial_accumulator": 0.1}),
    ("adadelta", "adadelta", 1.0, 0.0, {}),
    ("nadam", "nadam", 0.01, 0.0, {}),
    ("nadam_weight_decay", "nadam", 0.02, 0.05, {"beta1": 0.85, "momentum_decay": 0.01}),
]


def sgd(o, p, g, st, t, lr):
    mom = o["momentum"]
    if mom != 0.0:
        if t == 1:
            st["buf"] = g
        else:
            st["buf"] = mom * st["buf"] + (1.0 - o["dampening"]) * g
        g = g + mom * st["buf"] if o["nesterov"] else st["buf"]
    return p - lr * g


def adam(o, p, g, st, t, lr):
    b1, b2 = o["beta1"], o["beta2"]
    st["m"] = b1 * st.get("m", 0.0) + (1.0 - b1) * g
    st["v"] = b2 * st.get("v", 0.0) + (1.0 - b2) * g * g
    m_hat = st["m"] / (1.0 - b1**t)
    v_hat = st["v"] / (1.0 - b2**t)
    return p - lr * m_hat / (math.sqrt(v_hat) + o["epsilon"])


def rmsprop(o, p, g, st, t, lr):
    rho = o["rho"]
    st["sq"] = rho * st.get("sq", 0.0) + (1.0 - rho) * g * g
    var = st["sq"]
    if o["centered"]:
        st["avg"] = rho * st.get("avg", 0.0) + (1.0 - rho) * g
        var = var - st["avg"] ** 2
    step = g / (math.sqrt(var) + o["epsilon"])
    if o["momentum"] > 0.0:
        st["buf"] = o["momentum"] * st.get("buf", 0.0) + step
        step = st["buf"]
    return p - lr * step


def adagrad(o, p, g, st, t, lr):
    st["sum"] = st.get("sum", o["initial_accumulator"]) + g * g
    return p - lr * g / (math.sqrt(st["sum"]) + o["epsilon"])


def adadelta(o, p, g, st, t, lr):
    rho, eps = o["rho"], o["epsilon"]
    st["sq"] = rho * st.get("sq", 0.0) + (1.0 - rho) * g * g
    delta = math.sqrt(st.get("acc", 0.0) + eps) / math.sqrt(st["sq"] + eps) * g
    st["acc"] = rho * st.get("acc", 0.0) + (1.0 - rho) * delta * delta
    return p - lr * delta


def nadam_mu(o, t):
    return o["beta1"] * (1.0 - 0.5 * 0.96 ** (t * o["momentum_decay"]))


def nadam(o, p, g, st, t, lr):
    b1, b2 = o["beta1"], o["beta2"]
    mu, mu_next = nadam_mu(o, t), nadam_mu(o, t + 1)
    # The running product is shared by all elements; the caller advances it after the step.
    mu_product = st["mu_product"] * mu
    st["m"] = b1 * st.get("m", 0.0) + (1.0 - b1) * g
    st["v"] = b2 * st.get("v", 0.0) + (1.0 - b2) * g * g
    denom = math.sqrt(st["v"] / (1.0 - b2**t)) + o["epsilon"]
    p = p - lr * (1.0 - mu) / (1.0 - mu_product) * g / denom
    return p - lr * mu_next / (1.0 - mu_product * mu_next) * st["m"] / denom


RULES = {"sgd": sgd, "adam": adam, "adamw": adam, "rmsprop": rmsprop, "adagrad": adagrad,
         "adadelta": adadelta, "nadam": nadam}


def options(kind, overrides):
    o = dict(DEFAULTS[kind])
    o.update(overrides)
    return o


def rounded(o):
    return {k: (f32(v) if isinstance(v, float) else v) for k, v in o.items()}


def trajectory(kind, lr, weight_decay, o):
    lr, weight_decay = f32(lr), f32(weight_decay)
    params = [f32(x) for x in INITIAL]
    states = [{} for _ in params]
    mu_product = 1.0
    rows = []
    for t in range(1, STEPS + 1):
        for i in range(COUNT):
            p = params[i]
            if kind == "adamw":
                p = p * (1.0 - lr * o["decoupled_weight_decay"])
            g = f32(GRADS[t - 1][i]) + weight_decay * p
            states[i]["mu_product"] = mu_product
            params[i] = RULES[kind](o, p, g, states[i], t, lr)
        if kind == "nadam":
            mu_product *= nadam_mu(o, t)
        rows.append(list(params))
    return rows


def cfloat(x):
    s = repr(float(x))
    if "e" not in s and "." not in s:
        s += ".0"
    return s + "f"


def cdouble(x):
    return repr(float(x))


def main():
    out = []
    w = out.append
    w("// Generated by tests/reference/optimizer_reference.py; do not edit.")
    w("// Parameter trajectories computed in float64 from fp32-rounded inputs.")
    w("#pragma once")
    w("")
    w("#include <vector>")
    w("")
    w('#include "train/optimizer_math.hpp"')
    w("")
    w("namespace mixtrain::optimizer_reference {")
    w("")
    w(f"inline constexpr int kCount = {COUNT};")
    w(f"inline constexpr int kSteps = {STEPS};")
    w("inline constexpr float kInitial[kCount] = {" + ", ".join(cfloat(x) for x in INITIAL) + "};")
    w("inline constexpr float kGrads[kSteps][kCount] = {")
    for row in GRADS:
        w("    {" + ", ".join(cfloat(x) for x in row) + "},")
    w("};")
    w("")
    w("struct Case {")
    w("  const char* name;")
    w("  OptimizerHyper hyper;")
    w("  float lr;")
    w("  double expected[kSteps][kCount];  // parameters after each step")
    w("};")
    w("")
    w("inline std::vector<Case> cases() {")
    w("  std::vector<Case> all;")
    for name, kind, lr, wd, overrides in CASES:
        o = options(kind, overrides)
        rows = trajectory(kind, lr, wd, rounded(o))
        w("  {")
        w("    OptimizerHyper h;")
        w(f"    h.kind = Optimizer::{ENUM[kind]};")
        w(f"    h.weight_decay = {cfloat(wd)};")
        for key, value in o.items():
            literal = ("true" if value else "false") if isinstance(value, bool) else cfloat(value)
            w(f"    h.{kind}.{key} = {literal};")
        w(f'    all.push_back({{"{name}", h, {cfloat(lr)},')
        w("                   {")
        for row in rows:
            w("                       {" + ", ".join(cdouble(x) for x in row) + "},")
        w("                   }});")
        w("  }")
    w("  return all;")
    w("}")
    w("")
    w("}  // namespace mixtrain::optimizer_reference")
    print("\n".join(out))


if __name__ == "__main__":
    main()
