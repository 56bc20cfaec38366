// Typed exceptions. Every message names what was wrong: the layer, the shape, the value, the
// file and line. Catch mixtrain::Error to handle all of them.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace mixtrain {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A tensor shape does not fit where it is used (layer input, batch, labels).
class ShapeError : public Error {
 public:
  using Error::Error;
};

// A configuration value is out of range or inconsistent (TrainerConfig, LossScaleConfig, layer
// options, CLI flags).
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Input data is malformed or out of range: label out of range, NaN in inputs, bad IDX/CSV files.
// For files, the message names the file and, where it applies, the line and column.
class DataError : public Error {
 public:
  using Error::Error;
};

// Training diverged: the loss stayed non-finite at a sane loss scale, or the dynamic loss scale
// stayed pinned at its floor. The message says what happened and what to try.
class DivergenceError : public Error {
 public:
  using Error::Error;
};

// The requested device is unavailable or a device call failed.
class DeviceError : public Error {
 public:
  using Error::Error;
};

// Reading or writing a file failed (checkpoint, spec, report).
class IoError : public Error {
 public:
  using Error::Error;
};

}  // namespace mixtrain
