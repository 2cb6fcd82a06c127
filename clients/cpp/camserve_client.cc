#include "camserve_client.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

namespace camserve {
namespace {

std::string ReadFile(const std::string& path, const std::string& what) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::invalid_argument(what + ": cannot read " + path);
  std::ostringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

// float32 from 4 little-endian bytes, whatever the host's byte order.
float Float32At(const std::string& raw, size_t offset) {
  uint32_t bits = 0;
  for (int b = 3; b >= 0; --b) bits = (bits << 8) | static_cast<uint8_t>(raw[offset + b]);
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// IEEE 754 half-precision bits widened to float (exact).
float Float16(uint16_t bits) {
  const float sign = (bits & 0x8000) ? -1.0f : 1.0f;
  const int exponent = (bits >> 10) & 0x1f;
  const float fraction = static_cast<float>(bits & 0x3ff) / 1024.0f;
  if (exponent == 0) return sign * std::ldexp(fraction, -14);
  if (exponent == 0x1f) return fraction != 0 ? NAN : sign * INFINITY;
  return sign * std::ldexp(1.0f + fraction, exponent - 15);
}

size_t ItemSize(pb::DataType dtype) {
  switch (dtype) {
    case pb::DATA_TYPE_UNSPECIFIED:
    case pb::DATA_TYPE_FLOAT32:
      return 4;
    case pb::DATA_TYPE_FLOAT16:
      return 2;
    case pb::DATA_TYPE_UINT8:
      return 1;
    default:
      return 0;
  }
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

}  // namespace

StatusError::StatusError(const grpc::Status& status)
    : std::runtime_error(CodeName(status.error_code()) + ": " + status.error_message()),
      code_(status.error_code()),
      message_(status.error_message()) {}

std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
      "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  return index >= 0 && index < 17 ? kNames[index] : "CODE_" + std::to_string(index);
}

Array DecodeTensor(const pb::Tensor& tensor) {
  const size_t size = ItemSize(tensor.dtype());
  if (size == 0) throw std::invalid_argument("unknown tensor data type " + std::to_string(tensor.dtype()));
  Array array;
  array.dtype = tensor.dtype();
  array.shape.assign(tensor.shape().begin(), tensor.shape().end());
  size_t count = 1;
  for (int64_t d : array.shape) {
    if (d < 0) throw std::invalid_argument("tensor dimensions must be >= 0, got " + ShapeText(array.shape));
    count *= static_cast<size_t>(d);
  }
  const std::string& raw = tensor.data();
  if (raw.size() != count * size) {
    throw std::invalid_argument("tensor of shape " + ShapeText(array.shape) + " holds " +
                                std::to_string(raw.size()) + " bytes, expected " +
                                std::to_string(count * size));
  }
  array.data.resize(count);
  for (size_t i = 0; i < count; ++i) {
    if (size == 4) {
      array.data[i] = Float32At(raw, 4 * i);
    } else if (size == 2) {
      array.data[i] = Float16(static_cast<uint16_t>(static_cast<uint8_t>(raw[2 * i]) |
                                                    (static_cast<uint8_t>(raw[2 * i + 1]) << 8)));
    } else {
      array.data[i] = static_cast<uint8_t>(raw[i]);
    }
  }
  return array;
}

pb::Tensor EncodeFloat32(const std::vector<float>& values, const std::vector<int64_t>& shape) {
  std::string raw(4 * values.size(), '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], sizeof bits);
    for (int b = 0; b < 4; ++b) raw[4 * i + b] = static_cast<char>((bits >> (8 * b)) & 0xff);
  }
  pb::Tensor tensor;
  tensor.set_data(std::move(raw));
  for (int64_t d : shape) tensor.add_shape(d);
  tensor.set_dtype(pb::DATA_TYPE_FLOAT32);
  return tensor;
}

std::vector<Map> Maps(const pb::ImageExplanation& image) {
  std::vector<Map> maps;
  for (const pb::Map& m : image.maps()) {
    try {
      maps.push_back({m.method(), m.target_index(), m.class_id(), DecodeTensor(m.data())});
    } catch (const std::invalid_argument& error) {
      throw std::invalid_argument("map " + m.method() + " of target " + std::to_string(m.target_index()) +
                                  ": " + error.what());
    }
  }
  return maps;
}

pb::Image EncodedImage(std::string contents, const std::vector<int64_t>& targets) {
  pb::Image image;
  image.set_encoded(std::move(contents));
  for (int64_t t : targets) image.add_targets(t);
  return image;
}

void ThrowIfError(const pb::ExplainResponse& response) {
  if (response.has_error()) {
    throw StatusError(grpc::Status(static_cast<grpc::StatusCode>(response.error().code()),
                                   response.error().message()));
  }
}

Client::Client(const std::string& address, Options options) : options_(std::move(options)) {
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(options_.max_message_bytes);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options_.tls || !options_.ca_file.empty() || !options_.cert_file.empty() || !options_.key_file.empty()) {
    if (options_.cert_file.empty() != options_.key_file.empty()) {
      throw std::invalid_argument("a client certificate needs its key: set cert_file and key_file, or neither");
    }
    grpc::SslCredentialsOptions ssl;
    if (!options_.ca_file.empty()) ssl.pem_root_certs = ReadFile(options_.ca_file, "ca_file");
    if (!options_.cert_file.empty()) {
      ssl.pem_cert_chain = ReadFile(options_.cert_file, "cert_file");
      ssl.pem_private_key = ReadFile(options_.key_file, "key_file");
    }
    if (!options_.server_name.empty()) arguments.SetSslTargetNameOverride(options_.server_name);
    credentials = grpc::SslCredentials(ssl);
  } else if (!options_.server_name.empty()) {
    throw std::invalid_argument("server_name is only used with TLS");
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  channel_ = grpc::CreateCustomChannel(address, credentials, arguments);
  stub_ = pb::ExplainService::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Client::Context() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + options_.timeout);
  // Metadata rather than call credentials: the server decides whether a token may travel in plaintext
  // (a port on 127.0.0.1 behind a TLS proxy is a valid setup).
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
  return context;
}

std::vector<pb::ModelInfo> Client::ListModels() const {
  pb::ListModelsResponse reply;
  const grpc::Status status = stub_->ListModels(Context().get(), pb::ListModelsRequest(), &reply);
  if (!status.ok()) throw StatusError(status);
  return {reply.models().begin(), reply.models().end()};
}

pb::ModelInfo Client::GetModel(const std::string& name) const {
  pb::GetModelRequest request;
  request.set_name(name);
  pb::ModelInfo reply;
  const grpc::Status status = stub_->GetModel(Context().get(), request, &reply);
  if (!status.ok()) throw StatusError(status);
  return reply;
}

pb::ExplainResponse Client::Explain(const pb::ExplainRequest& request) const {
  pb::ExplainResponse reply;
  const grpc::Status status = stub_->Explain(Context().get(), request, &reply);
  if (!status.ok()) throw StatusError(status);
  return reply;
}

void Client::ExplainStream(const std::vector<pb::ExplainRequest>& requests,
                           const std::function<void(const pb::ExplainResponse&)>& handle) const {
  const auto context = Context();
  auto stream = stub_->ExplainStream(context.get());
  std::thread writer([&] {
    for (const pb::ExplainRequest& request : requests) {
      if (!stream->Write(request)) return;  // the stream ended: Finish below has its status
    }
    stream->WritesDone();
  });
  pb::ExplainResponse reply;
  std::exception_ptr failure;
  while (stream->Read(&reply)) {
    if (failure) continue;  // drain: Finish needs every message read
    try {
      handle(reply);
    } catch (...) {
      failure = std::current_exception();
      context->TryCancel();
    }
  }
  writer.join();
  const grpc::Status status = stream->Finish();
  if (failure) std::rethrow_exception(failure);
  if (!status.ok()) throw StatusError(status);
}

}  // namespace camserve
