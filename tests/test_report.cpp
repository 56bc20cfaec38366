#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "mixtrain/error.hpp"
#include "mixtrain/report.hpp"

namespace mixtrain {
namespace {

std::vector<StepStats> sample_history() {
  return {{2.5f, 65536.0f, INFINITY, true},
          {2.4f, 32768.0f, 3.0f, false},
          {NAN, 32768.0f, INFINITY, true},
          {1.0f, 16384.0f, 1.5f, false}};
}

std::size_t count(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(Report, CsvHasOneRowPerStep) {
  const std::string csv = history_csv(sample_history());
  EXPECT_EQ(count(csv, "\n"), 5u);
  EXPECT_NE(csv.find("0,2.5,65536,inf,1\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find("3,1,16384,1.5,0\n"), std::string::npos) << csv;
}

TEST(Report, SvgPlotsFiniteValuesAndMarksSkippedSteps) {
  const std::string svg = history_svg(sample_history(), "run <1>");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(count(svg, "<polyline"), 3u);
  EXPECT_EQ(count(svg, "stroke='#d62728'"), 6u);  // 2 skipped steps x 3 panels
  EXPECT_NE(svg.find("run &lt;1&gt;"), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
}

TEST(Report, SaveChoosesTheFormatByExtension) {
  const auto dir = std::filesystem::temp_directory_path();
  save_history(sample_history(), dir / "mixtrain_report_test.svg");
  save_history(sample_history(), dir / "mixtrain_report_test.csv");
  EXPECT_GT(std::filesystem::file_size(dir / "mixtrain_report_test.svg"), 500u);
  EXPECT_THROW(save_history(sample_history(), dir / "x.png"), ConfigError);
  std::filesystem::remove(dir / "mixtrain_report_test.svg");
  std::filesystem::remove(dir / "mixtrain_report_test.csv");
}

}  // namespace
}  // namespace mixtrain
