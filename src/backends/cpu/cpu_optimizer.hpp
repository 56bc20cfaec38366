// The optimizer pass of the CPU backend.
#pragma once

#include "ops/backend.hpp"

namespace mixtrain {

// Updates d.master and d.state with the rule of d.hyper and writes the working copy when
// d.working is set; does nothing when d.control->found_inf is set. Reads the control block only.
void cpu_optimizer_step(const OptimizerDesc& d);

}  // namespace mixtrain
