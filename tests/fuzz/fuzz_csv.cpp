// libFuzzer target: the CSV reader through its in-memory entry point. The input is the file's
// text (a seed is a real file), read with several option sets: header detection and forced
// either way, a label column by index and by name, regression targets, other delimiters.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "data/readers.hpp"
#include "mixtrain/error.hpp"

namespace {

void read(std::string_view text, const mixtrain::CsvOptions& options) {
  try {
    const mixtrain::Dataset d = mixtrain::detail::csv_from_text(text, "fuzz.csv", options);
    d.validate();  // a dataset the reader returns is consistent
  } catch (const mixtrain::Error&) {
    // A typed error naming file, line and column is the expected outcome for malformed input.
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  mixtrain::CsvOptions options;
  read(text, options);  // the defaults: detected header, last column a class label
  options.has_header = false;
  options.label_column = 0;
  read(text, options);
  options.has_header = true;
  options.label_name = "label";
  read(text, options);
  mixtrain::CsvOptions regression;
  regression.classification = false;
  regression.label_column = -2;
  regression.delimiter = ';';
  read(text, regression);
  regression.delimiter = '\t';
  regression.has_header = true;
  read(text, regression);
  return 0;
}
