// Explains one PNG with Grad-CAM and prints where the map peaks: the smallest use of the C++ client.
//
//   example 127.0.0.1:50051 digit.png
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "camserve_client.h"

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  camserve::Options options;
  if (const char* token = std::getenv("CAMSERVE_TOKEN")) options.token = token;
  camserve::Client client(argv[1], options);

  std::ifstream file(argv[2], std::ios::binary);
  std::ostringstream png;
  png << file.rdbuf();
  camserve::v1::ExplainRequest request;
  request.set_model("digits");
  request.add_methods("gradcam");
  *request.add_images() = camserve::EncodedImage(png.str(), {-1});  // -1: the best class
  try {
    const camserve::v1::ExplainResponse reply = client.Explain(request);
    const camserve::v1::ImageExplanation& image = reply.images(0);
    const camserve::Map map = camserve::Maps(image).at(0);
    const std::vector<float>& values = map.values.data;  // [H, W] row-major
    const auto peak = std::max_element(values.begin(), values.end()) - values.begin();
    const int64_t width = map.values.shape[1];
    std::cout << "class " << image.target_ids(0) << ": " << map.method << " map [" << map.values.shape[0]
              << " " << width << "] peaks at row " << peak / width << ", column " << peak % width << "\n";
  } catch (const camserve::StatusError& error) {
    std::cerr << error.what() << " (code " << camserve::CodeName(error.code()) << ")\n";
    return 1;
  }
  return 0;
}
