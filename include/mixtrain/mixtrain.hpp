// The whole public API.
#pragma once

#include "mixtrain/data.hpp"
#include "mixtrain/dtype.hpp"
#include "mixtrain/error.hpp"
#include "mixtrain/loss.hpp"
#include "mixtrain/model.hpp"
#include "mixtrain/optim.hpp"
#include "mixtrain/precision.hpp"
#include "mixtrain/report.hpp"
#include "mixtrain/schedule.hpp"
#include "mixtrain/shape.hpp"
#include "mixtrain/trainer.hpp"
