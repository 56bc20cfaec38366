// Writes a file so that readers see either the old content or the complete new one: write to a
// temporary file in the same directory, flush it to disk, then rename over the target.
#pragma once

#include <filesystem>
#include <string_view>

namespace mixtrain {

// Throws IoError naming the path on failure; the previous file, if any, is left untouched.
void write_file_atomic(const std::filesystem::path& path, std::string_view content);

// Reads a whole file; throws IoError naming the path.
std::string read_file(const std::filesystem::path& path);

}  // namespace mixtrain
