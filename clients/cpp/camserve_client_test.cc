// Unit checks of the tensor convention and status names (no server): run by tests/clients.
#include <cmath>
#include <cstdio>
#include <string>

#include "camserve_client.h"

namespace pb = camserve::v1;

static int failures = 0;
#define CHECK(condition)                                                   \
  do {                                                                     \
    if (!(condition)) {                                                    \
      std::fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #condition); \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

static pb::Tensor MakeTensor(const std::string& raw, std::vector<int64_t> shape, pb::DataType dtype) {
  pb::Tensor tensor;
  tensor.set_data(raw);
  for (int64_t d : shape) tensor.add_shape(d);
  tensor.set_dtype(dtype);
  return tensor;
}

static std::string ErrorOf(const pb::Tensor& tensor) {
  try {
    camserve::DecodeTensor(tensor);
  } catch (const std::invalid_argument& error) {
    return error.what();
  }
  return "";
}

int main() {
  // 1.0 = 0x3f800000, -2.5 = 0xc0200000: least significant byte first.
  const std::string raw("\x00\x00\x80\x3f\x00\x00\x20\xc0", 8);
  const camserve::Array floats = camserve::DecodeTensor(MakeTensor(raw, {1, 2}, pb::DATA_TYPE_UNSPECIFIED));
  CHECK(floats.data.size() == 2 && floats.data[0] == 1.0f && floats.data[1] == -2.5f);
  CHECK((floats.shape == std::vector<int64_t>{1, 2}));
  CHECK(camserve::EncodeFloat32({1.0f, -2.5f}, {1, 2}).data() == raw);

  // 0x3c00 = 1, 0xc000 = -2, 0x0001 = 2^-24 (smallest subnormal), 0x7bff = 65504, 0xfc00 = -inf.
  const std::string halves("\x00\x3c\x00\xc0\x01\x00\xff\x7b\x00\xfc", 10);
  const camserve::Array widened = camserve::DecodeTensor(MakeTensor(halves, {5}, pb::DATA_TYPE_FLOAT16));
  CHECK(widened.data[0] == 1.0f && widened.data[1] == -2.0f && widened.data[2] == std::ldexp(1.0f, -24));
  CHECK(widened.data[3] == 65504.0f && std::isinf(widened.data[4]) && widened.data[4] < 0);
  const camserve::Array bytes = camserve::DecodeTensor(MakeTensor(std::string("\x00\x80\xff", 3), {3}, pb::DATA_TYPE_UINT8));
  CHECK(bytes.data[1] == 128.0f && bytes.data[2] == 255.0f);

  CHECK(ErrorOf(MakeTensor(std::string(12, '\0'), {2, 2}, pb::DATA_TYPE_FLOAT32)) ==
        "tensor of shape [2, 2] holds 12 bytes, expected 16");
  CHECK(ErrorOf(MakeTensor("", {-1}, pb::DATA_TYPE_FLOAT32)).find(">= 0") != std::string::npos);
  CHECK(ErrorOf(MakeTensor("", {}, static_cast<pb::DataType>(9))) == "unknown tensor data type 9");

  CHECK(camserve::CodeName(grpc::StatusCode::NOT_FOUND) == "NOT_FOUND");
  CHECK(camserve::CodeName(grpc::StatusCode::UNAUTHENTICATED) == "UNAUTHENTICATED");
  pb::ExplainResponse failed;
  failed.mutable_error()->set_code(3);
  failed.mutable_error()->set_message("images[0].tensor.data: holds 4 bytes");
  try {
    camserve::ThrowIfError(failed);
    CHECK(false);
  } catch (const camserve::StatusError& error) {
    CHECK(error.code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(std::string(error.what()) == "INVALID_ARGUMENT: images[0].tensor.data: holds 4 bytes");
  }
  camserve::ThrowIfError(pb::ExplainResponse());  // no error set: no throw
  std::printf("%s\n", failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
