// In-memory entry points of the IDX and CSV readers. read_idx and read_csv read their files and
// call these; the fuzz targets (tests/fuzz) call them directly. Same checks, same errors, with
// the given names standing for the files.
#pragma once

#include <string>
#include <string_view>

#include "mixtrain/data.hpp"

namespace mixtrain::detail {

// The contents of an IDX images file and an IDX labels file, each raw or gzip-compressed.
Dataset idx_from_bytes(std::string_view images, const std::string& images_name,
                       std::string_view labels, const std::string& labels_name, bool image_layout);

// The text of a CSV file.
Dataset csv_from_text(std::string_view text, const std::string& name, const CsvOptions& options);

}  // namespace mixtrain::detail
