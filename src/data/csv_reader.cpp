// Numeric CSV reader: one sample per line, one column of labels (or float targets), the rest
// features. Fields may be double-quoted (mainly for header names).
//
// Header rule (CsvOptions::has_header unset): the first non-blank line is a header when none of
// its cells parses as a number (empty cells do not), data when all of them do; a first line
// with both is an error naming the file, the line and the first cell that is not a number, so a
// typo in the first data row is reported instead of the row being dropped as a header.
#include <algorithm>
#include <cfloat>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "data/readers.hpp"
#include "mixtrain/data.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain {

namespace fs = std::filesystem;

namespace {

enum class NumberStatus { kOk, kEmpty, kNotNumber, kNotFinite, kOutOfRange };

NumberStatus parse_number(std::string_view s, double& value) {
  if (s.empty()) return NumberStatus::kEmpty;
  // from_chars rejects a leading '+', which CSV writers sometimes emit.
  if (s.size() > 1 && s[0] == '+' && s[1] != '-' && s[1] != '+') s.remove_prefix(1);
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ptr != s.data() + s.size() || ec == std::errc::invalid_argument) {
    return NumberStatus::kNotNumber;
  }
  if (ec == std::errc::result_out_of_range) return NumberStatus::kOutOfRange;
  if (!std::isfinite(value)) return NumberStatus::kNotFinite;
  if (std::fabs(value) > FLT_MAX) return NumberStatus::kOutOfRange;
  return NumberStatus::kOk;
}

// The offending text for an error message, shortened when a whole line ended up in one field.
std::string quote_field(std::string_view s) {
  constexpr std::size_t kMax = 40;
  if (s.size() <= kMax) return fmt::format("'{}'", s);
  return fmt::format("'{}...'", s.substr(0, kMax));
}

std::string_view trim(std::string_view s, char delimiter) {
  const auto is_blank = [delimiter](char c) { return (c == ' ' || c == '\t') && c != delimiter; };
  while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
  return s;
}

std::string describe(char delimiter) {
  if (delimiter == '\t') return "tab";
  if (delimiter == ' ') return "space";
  if (static_cast<unsigned char>(delimiter) < 0x20) {
    return fmt::format("(character code {})", static_cast<int>(delimiter));
  }
  return fmt::format("'{}'", delimiter);
}

bool is_blank_line(std::string_view line) {
  return line.find_first_not_of(" \t") == std::string_view::npos;
}

std::string read_text(const fs::path& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw DataError(fmt::format("{}: no such file", path.string()));
  if (fs::is_directory(st)) {
    throw DataError(fmt::format("{}: is a directory, expected a CSV file", path.string()));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(fmt::format("{}: cannot open for reading", path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw DataError(fmt::format("{}: read error", path.string()));
  return std::move(text).str();
}

class CsvParser {
 public:
  CsvParser(std::string name, const CsvOptions& options)
      : name_(std::move(name)), options_(options) {
    const char d = options.delimiter;
    if (d == '"' || d == '\n' || d == '\r' || d == '\0') {
      throw ConfigError(fmt::format("{}: CSV delimiter {} is not allowed", name_, describe(d)));
    }
  }

  Dataset parse(std::string_view text) {
    if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // UTF-8 byte order mark
    std::size_t line_no = 0;
    while (!text.empty()) {
      const std::size_t eol = text.find('\n');
      std::string_view line = text.substr(0, eol);
      text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
      ++line_no;
      if (line.ends_with('\r')) line.remove_suffix(1);
      if (is_blank_line(line)) continue;
      std::vector<std::string> fields = split(line, line_no);
      if (num_columns_ == 0) {
        if (start(fields, line_no)) continue;
      }
      add_row(fields, line_no);
    }
    return finish();
  }

 private:
  std::string where(std::size_t line, std::size_t column) const {
    return fmt::format("{}:{}:{}", name_, line, column + 1);
  }

  std::vector<std::string> split(std::string_view line, std::size_t line_no) const {
    const char delim = options_.delimiter;
    std::vector<std::string> fields;
    std::string field;
    bool in_quotes = false;
    for (std::size_t i = 0; i < line.size(); ++i) {
      const char c = line[i];
      if (in_quotes) {
        if (c != '"') {
          field += c;
        } else if (i + 1 < line.size() && line[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          in_quotes = false;
        }
      } else if (c == delim) {
        fields.emplace_back(trim(field, delim));
        field.clear();
      } else if (c == '"' && trim(field, delim).empty()) {
        field.clear();
        in_quotes = true;
      } else {
        field += c;
      }
    }
    if (in_quotes) {
      throw DataError(fmt::format("{}: unterminated quoted field", where(line_no, fields.size())));
    }
    fields.emplace_back(trim(field, delim));
    return fields;
  }

  // Takes the column layout from the first non-empty line; returns true when it is a header.
  bool start(const std::vector<std::string>& fields, std::size_t line_no) {
    num_columns_ = fields.size();
    if (num_columns_ < 2) {
      throw DataError(fmt::format(
          "{}:{}: need at least 2 columns (features and a label) but found 1; is the delimiter "
          "{} right?",
          name_, line_no, describe(options_.delimiter)));
    }
    const bool header = options_.has_header ? *options_.has_header : detect_header(fields, line_no);
    label_index_ = find_label_column(header ? &fields : nullptr);
    return header;
  }

  // The first row is a header when none of its cells is a number (empty cells count as not
  // numbers), data when every cell is one. A row with both is neither: most likely a data row
  // with a typo, which must not be dropped as a header without a word.
  bool detect_header(const std::vector<std::string>& fields, std::size_t line_no) const {
    std::size_t numbers = 0;
    std::optional<std::size_t> first_other;
    for (std::size_t i = 0; i < fields.size(); ++i) {
      double unused = 0;
      const NumberStatus s = parse_number(fields[i], unused);
      if (s == NumberStatus::kNotNumber || s == NumberStatus::kEmpty) {
        if (!first_other) first_other = i;
      } else {
        ++numbers;  // kOk, and numbers a data row rejects later (NaN, infinity, out of range)
      }
    }
    if (numbers == 0) return true;
    if (!first_other) return false;
    const std::string& cell = fields[*first_other];
    throw DataError(fmt::format(
        "{}: {} is not a number, but {} of the {} cells of the first row are: a header row has "
        "no numeric cell and a data row no other; fix the cell, or say whether the file has a "
        "header (CsvOptions::has_header, mixtrain --header yes|no)",
        where(line_no, *first_other), cell.empty() ? "an empty field" : quote_field(cell), numbers,
        fields.size()));
  }

  std::size_t find_label_column(const std::vector<std::string>* header) const {
    if (!options_.label_name.empty()) return find_label_name(header);
    const int n = static_cast<int>(num_columns_);
    const int c = options_.label_column;
    if (c >= n || c < -n) {
      throw ConfigError(fmt::format("{}: label column {} is out of range for {} columns", name_, c,
                                    num_columns_));
    }
    return static_cast<std::size_t>(c < 0 ? n + c : c);
  }

  std::size_t find_label_name(const std::vector<std::string>* header) const {
    const std::string& wanted = options_.label_name;
    if (header == nullptr) {
      throw ConfigError(
          fmt::format("{}: label column \"{}\" is requested by name but the file has no header row",
                      name_, wanted));
    }
    std::optional<std::size_t> found;
    for (std::size_t i = 0; i < header->size(); ++i) {
      if ((*header)[i] != wanted) continue;
      if (found) {
        throw ConfigError(
            fmt::format("{}: label column \"{}\" appears twice in the header (columns {} and {})",
                        name_, wanted, *found + 1, i + 1));
      }
      found = i;
    }
    if (!found) {
      throw ConfigError(fmt::format("{}: no column named \"{}\" in the header (columns: {})", name_,
                                    wanted, fmt::join(*header, ", ")));
    }
    return *found;
  }

  void add_row(const std::vector<std::string>& fields, std::size_t line_no) {
    if (fields.size() != num_columns_) {
      throw DataError(fmt::format("{}:{}: expected {} fields, found {}", name_, line_no,
                                  num_columns_, fields.size()));
    }
    for (std::size_t col = 0; col < fields.size(); ++col) {
      const double value = number(fields[col], line_no, col);
      if (col != label_index_) {
        features_.push_back(static_cast<float>(value));
      } else if (options_.classification) {
        labels_.push_back(class_id(value, fields[col], line_no, col));
      } else {
        targets_.push_back(static_cast<float>(value));
      }
    }
    ++num_rows_;
  }

  double number(const std::string& field, std::size_t line_no, std::size_t col) const {
    double value = 0;
    switch (parse_number(field, value)) {
      case NumberStatus::kOk:
        return value;
      case NumberStatus::kEmpty:
        throw DataError(fmt::format("{}: empty field", where(line_no, col)));
      case NumberStatus::kNotNumber:
        throw DataError(
            fmt::format("{}: {} is not a number", where(line_no, col), quote_field(field)));
      case NumberStatus::kNotFinite:
        throw DataError(
            fmt::format("{}: {} is not a finite number (NaN and infinity are not allowed)",
                        where(line_no, col), quote_field(field)));
      case NumberStatus::kOutOfRange:
        throw DataError(fmt::format("{}: {} is out of range for a float", where(line_no, col),
                                    quote_field(field)));
    }
    return value;
  }

  std::int32_t class_id(double value, const std::string& field, std::size_t line_no,
                        std::size_t col) const {
    constexpr double kMax = std::numeric_limits<std::int32_t>::max() - 1;
    if (value < 0 || value > kMax || value != std::floor(value)) {
      throw DataError(fmt::format("{}: label {} is not a non-negative integer class id",
                                  where(line_no, col), quote_field(field)));
    }
    return static_cast<std::int32_t>(value);
  }

  Dataset finish() {
    if (num_rows_ == 0) throw DataError(fmt::format("{}: no data rows", name_));
    Dataset data;
    data.features = std::move(features_);
    data.sample_shape = {static_cast<std::int64_t>(num_columns_ - 1)};
    if (options_.classification) {
      std::int32_t max_label = 0;
      for (std::int32_t l : labels_) max_label = std::max(max_label, l);
      data.labels = std::move(labels_);
      data.num_classes = max_label + 1;
    } else {
      data.targets = std::move(targets_);
      data.target_size = 1;
    }
    return data;
  }

  std::string name_;
  const CsvOptions& options_;
  std::size_t num_columns_ = 0;
  std::size_t label_index_ = 0;
  std::size_t num_rows_ = 0;
  std::vector<float> features_;
  std::vector<std::int32_t> labels_;
  std::vector<float> targets_;
};

}  // namespace

namespace detail {

Dataset csv_from_text(std::string_view text, const std::string& name, const CsvOptions& options) {
  return CsvParser(name, options).parse(text);
}

}  // namespace detail

Dataset read_csv(const fs::path& path, const CsvOptions& options) {
  const std::string text = read_text(path);
  return detail::csv_from_text(text, path.string(), options);
}

}  // namespace mixtrain
