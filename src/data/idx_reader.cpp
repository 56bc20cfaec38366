// IDX reader (MNIST / Fashion-MNIST format), raw or gzip-compressed.
//
// An IDX file is a big-endian 32-bit magic number 0x0000TTNN (TT: element type, 0x08 for
// unsigned bytes; NN: number of dimensions), NN big-endian 32-bit dimension sizes, then the
// elements in row-major order.
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "data/readers.hpp"
#include "mixtrain/data.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain {

namespace fs = std::filesystem;

namespace {

constexpr std::uint32_t kImagesMagic = 0x00000803;
constexpr std::uint32_t kLabelsMagic = 0x00000801;

struct FileBytes {
  std::vector<unsigned char> bytes;
  bool compressed = false;
  std::string gzip_problem;  // non-empty when the gzip stream ended early
};

void require_regular_file(const fs::path& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw DataError(fmt::format("{}: no such file", path.string()));
  if (fs::is_directory(st)) {
    throw DataError(fmt::format("{}: is a directory, expected an IDX file", path.string()));
  }
}

// The file's bytes as stored (compressed or not).
std::string read_raw(const fs::path& path) {
  require_regular_file(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw DataError(fmt::format("{}: cannot open: {}", path.string(), std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw DataError(fmt::format("{}: read error", path.string()));
  return std::move(text).str();
}

bool is_gzip(std::string_view raw) {
  return raw.size() >= 2 && static_cast<unsigned char>(raw[0]) == 0x1f &&
         static_cast<unsigned char>(raw[1]) == 0x8b;
}

// Inflates gzip data (detected by its magic bytes) and passes anything else through unchanged,
// as zlib's gzread did for the files: gzip members that follow each other are concatenated, and
// bytes after a member that do not start another are ignored.
FileBytes decode(std::string_view raw, const std::string& name) {
  FileBytes out;
  if (!is_gzip(raw)) {
    out.bytes.assign(raw.begin(), raw.end());
    return out;
  }
  out.compressed = true;
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
    throw DataError(fmt::format("{}: cannot start gzip decompression", name));
  }
  std::unique_ptr<z_stream, decltype(&inflateEnd)> guard(&z, &inflateEnd);
  // zlib counts in 32-bit unsigned ints: at most 1 GiB in or out per call.
  constexpr std::size_t kMaxStep = std::size_t{1} << 30;
  // Start near the usual ratio for images (4:1 is typical; grown by doubling), not at a fixed
  // megabyte that small inputs would zero-fill for nothing.
  out.bytes.resize(std::clamp<std::size_t>(raw.size() * 4, 4096, std::size_t{1} << 24));
  std::size_t produced = 0;
  std::string_view in = raw;
  for (;;) {
    if (produced == out.bytes.size()) out.bytes.resize(out.bytes.size() * 2);
    const std::size_t feed = std::min(in.size(), kMaxStep);
    const std::size_t space = std::min(out.bytes.size() - produced, kMaxStep);
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    z.avail_in = static_cast<uInt>(feed);
    z.next_out = out.bytes.data() + produced;
    z.avail_out = static_cast<uInt>(space);
    const int ret = inflate(&z, Z_NO_FLUSH);
    in.remove_prefix(feed - z.avail_in);
    produced += space - z.avail_out;
    if (ret == Z_STREAM_END) {
      if (!is_gzip(in)) break;  // the end, or trailing bytes that gzread ignored too
      inflateReset(&z);
    } else if (ret == Z_BUF_ERROR || (ret == Z_OK && in.empty() && z.avail_out != 0)) {
      out.gzip_problem = fmt::format(
          "{}: truncated gzip data (unexpected end of file) after {} decompressed bytes", name,
          produced);
      break;
    } else if (ret != Z_OK) {
      throw DataError(
          fmt::format("{}: corrupt gzip data: {}", name, z.msg != nullptr ? z.msg : zError(ret)));
    }
  }
  out.bytes.resize(produced);
  return out;
}

std::uint32_t read_be32(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

std::string describe_magic(std::uint32_t magic) {
  if (magic == kImagesMagic) return "an IDX images file";
  if (magic == kLabelsMagic) return "an IDX labels file";
  if ((magic >> 16) == 0) {
    return fmt::format("an IDX file of element type 0x{:02x} with {} dimensions",
                       (magic >> 8) & 0xff, magic & 0xff);
  }
  return "not an IDX file";
}

std::string describe_contents(std::uint32_t magic, const std::vector<std::uint32_t>& dims) {
  if (magic == kImagesMagic) return fmt::format("{} images of {}x{}", dims[0], dims[1], dims[2]);
  return fmt::format("{} labels", dims[0]);
}

// Product of dims, saturating at the largest uint64 (then it cannot match any real file).
std::uint64_t element_count(const std::vector<std::uint32_t>& dims) {
  std::uint64_t n = 1;
  for (std::uint32_t d : dims) {
    if (d != 0 && n > std::numeric_limits<std::uint64_t>::max() / d) {
      return std::numeric_limits<std::uint64_t>::max();
    }
    n *= d;
  }
  return n;
}

struct IdxContents {
  std::vector<std::uint32_t> dims;
  FileBytes file;
  std::size_t header_size = 0;
  const unsigned char* data() const { return file.bytes.data() + header_size; }
};

// Decodes a file's bytes and checks the magic number and that the file holds exactly the data
// its header announces.
IdxContents parse_idx(std::string_view raw, const std::string& name, std::uint32_t magic) {
  IdxContents out;
  out.file = decode(raw, name);
  const FileBytes& file = out.file;
  const std::vector<unsigned char>& bytes = file.bytes;
  if (bytes.size() < 4) {
    throw DataError(
        fmt::format("{}: truncated: the file ends after {} bytes, before the 4-byte magic number",
                    name, bytes.size()));
  }
  const std::uint32_t found = read_be32(bytes.data());
  if (found != magic) {
    throw DataError(fmt::format("{}: bad magic number 0x{:08x} ({}); expected 0x{:08x} ({})", name,
                                found, describe_magic(found), magic, describe_magic(magic)));
  }
  const std::size_t ndims = magic & 0xff;
  const std::size_t header_size = 4 + 4 * ndims;
  if (bytes.size() < header_size) {
    throw DataError(
        fmt::format("{}: truncated: the file ends after {} bytes, inside the {}-byte header", name,
                    bytes.size(), header_size));
  }
  for (std::size_t i = 0; i < ndims; ++i) out.dims.push_back(read_be32(&bytes[4 + 4 * i]));
  out.header_size = header_size;
  const std::uint64_t count = element_count(out.dims);
  const std::uint64_t available = bytes.size() - header_size;
  if (count > available) {
    throw DataError(fmt::format("{}: truncated: header says {} but the file ends after {} bytes{}",
                                name, describe_contents(magic, out.dims), bytes.size(),
                                file.compressed ? " (decompressed)" : ""));
  }
  if (count < available) {
    throw DataError(fmt::format("{}: {} unexpected bytes after the {} the header announces", name,
                                available - count, describe_contents(magic, out.dims)));
  }
  if (!file.gzip_problem.empty()) throw DataError(file.gzip_problem);
  if (count == 0) {
    throw DataError(fmt::format("{}: holds no data (header says {})", name,
                                describe_contents(magic, out.dims)));
  }
  return out;
}

std::vector<float> scale_pixels(const unsigned char* pixels, std::size_t n) {
  std::array<float, 256> table{};
  for (std::size_t v = 0; v < table.size(); ++v) table[v] = static_cast<float>(v) / 255.0f;
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = table[pixels[i]];
  return out;
}

// Fashion-MNIST file `stem` in `dir`, preferring the .gz form.
fs::path find_fashion_file(const fs::path& dir, const std::string& stem) {
  fs::path gz = dir / (stem + ".gz");  // not const: returned by move
  fs::path raw = dir / stem;
  std::error_code ec;
  if (fs::exists(gz, ec)) return gz;
  if (fs::exists(raw, ec)) return raw;
  const std::string hint =
      "install the dataset with `apt-get install dataset-fashion-mnist`, or load it from a "
      "directory that holds its files";
  if (!fs::is_directory(dir, ec)) {
    throw DataError(
        fmt::format("Fashion-MNIST directory {} does not exist; {}", dir.string(), hint));
  }
  throw DataError(
      fmt::format("Fashion-MNIST file {} (or {}) not found; {}", gz.string(), raw.string(), hint));
}

}  // namespace

namespace {

Dataset to_dataset(const IdxContents& img, const std::string& images_name, const IdxContents& lab,
                   const std::string& labels_name, bool image_layout) {
  if (img.dims[0] != lab.dims[0]) {
    throw DataError(fmt::format("{} has {} images but {} has {} labels", images_name, img.dims[0],
                                labels_name, lab.dims[0]));
  }
  const std::size_t n = img.dims[0];
  const std::size_t rows = img.dims[1];
  const std::size_t cols = img.dims[2];

  Dataset data;
  data.features = scale_pixels(img.data(), n * rows * cols);
  if (image_layout) {
    // Channels-last, the layout of the conv2d layers: [rows, cols, 1].
    data.sample_shape = {static_cast<std::int64_t>(rows), static_cast<std::int64_t>(cols), 1};
  } else {
    data.sample_shape = {static_cast<std::int64_t>(rows * cols)};
  }
  data.labels.assign(lab.data(), lab.data() + n);
  int max_label = 0;
  for (std::int32_t l : data.labels) max_label = std::max(max_label, l);
  data.num_classes = max_label + 1;
  return data;
}

}  // namespace

namespace detail {

Dataset idx_from_bytes(std::string_view images, const std::string& images_name,
                       std::string_view labels, const std::string& labels_name, bool image_layout) {
  const IdxContents img = parse_idx(images, images_name, kImagesMagic);
  const IdxContents lab = parse_idx(labels, labels_name, kLabelsMagic);
  return to_dataset(img, images_name, lab, labels_name, image_layout);
}

}  // namespace detail

Dataset read_idx(const fs::path& images, const fs::path& labels, bool image_layout) {
  // Each file is read and checked before the next is opened, so the first bad file is named.
  const IdxContents img = parse_idx(read_raw(images), images.string(), kImagesMagic);
  const IdxContents lab = parse_idx(read_raw(labels), labels.string(), kLabelsMagic);
  return to_dataset(img, images.string(), lab, labels.string(), image_layout);
}

Dataset load_fashion_mnist(const fs::path& dir, const std::string& split, bool image_layout) {
  std::string prefix;
  if (split == "train") {
    prefix = "train";
  } else if (split == "test") {
    prefix = "t10k";
  } else {
    throw ConfigError(
        fmt::format("Fashion-MNIST split must be \"train\" or \"test\", got \"{}\"", split));
  }
  const fs::path images = find_fashion_file(dir, prefix + "-images-idx3-ubyte");
  const fs::path labels = find_fashion_file(dir, prefix + "-labels-idx1-ubyte");
  return read_idx(images, labels, image_layout);
}

fs::path default_fashion_mnist_dir() {
  return "/usr/share/datasets/fashion-mnist";
}

}  // namespace mixtrain
