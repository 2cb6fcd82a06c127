// C++ client of the camserve.v1 gRPC explanation service: connects (plaintext, TLS or mTLS, with an
// optional bearer token), calls Explain, ExplainStream, ListModels and GetModel, and decodes the maps
// the service sends as raw little-endian bytes into float values with their shape.
//
// A failed call throws camserve::StatusError, which carries the server's gRPC status code and message.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "camserve/v1/camserve.grpc.pb.h"

namespace camserve {

namespace pb = ::camserve::v1;

// Bounds the replies the client accepts (maps of many images are large).
constexpr int kDefaultMaxMessageBytes = 64 << 20;

// Options of a connection; the defaults are a plaintext connection without a token.
struct Options {
  bool tls = false;         // speak TLS (implied by ca_file, cert_file or key_file)
  std::string ca_file;      // PEM CA that verifies the server; empty: the system's roots
  std::string cert_file;    // PEM client certificate for mTLS (with key_file)
  std::string key_file;     // PEM key of cert_file
  std::string server_name;  // name the server's certificate is checked against, when the address differs
  std::string token;        // bearer token sent as "authorization: Bearer <token>" with every call
  std::chrono::milliseconds timeout{60000};  // deadline of each call (of a whole stream)
  int max_message_bytes = kDefaultMaxMessageBytes;
};

// A call's gRPC status: code() and message() are the server's.
class StatusError : public std::runtime_error {
 public:
  explicit StatusError(const grpc::Status& status);
  grpc::StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  grpc::StatusCode code_;
  std::string message_;
};

// A status code's canonical name, as the other camserve clients print it ("NOT_FOUND").
std::string CodeName(grpc::StatusCode code);

// A decoded camserve.v1.Tensor: C-order values with their shape. float16 and uint8 tensors are widened
// to float (uint8 maps keep their 0..255 values: round(255 * normalised value)).
struct Array {
  std::vector<int64_t> shape;
  std::vector<float> data;
  pb::DataType dtype = pb::DATA_TYPE_FLOAT32;  // as sent; DATA_TYPE_UNSPECIFIED is float32
};

// Decodes raw little-endian bytes; std::invalid_argument names what does not fit.
Array DecodeTensor(const pb::Tensor& tensor);
// The tensor of float32 values (C order) with the given shape, little-endian.
pb::Tensor EncodeFloat32(const std::vector<float>& values, const std::vector<int64_t>& shape);

// One decoded map of an image: for target target_index (class class_id) by method, shape [H, W].
struct Map {
  std::string method;
  int target_index = 0;
  int64_t class_id = 0;
  Array values;
};

// An image's maps, in the response's order (target-major, then method).
std::vector<Map> Maps(const pb::ImageExplanation& image);

// An image given as PNG or JPEG file contents, with the classes to explain (ids >= 0, or -k for the
// k-th best class; none: the best class).
pb::Image EncodedImage(std::string contents, const std::vector<int64_t>& targets = {});

// A connection to a camserve server; its calls may run from several threads.
class Client {
 public:
  Client(const std::string& address, Options options = {});

  std::vector<pb::ModelInfo> ListModels() const;
  pb::ModelInfo GetModel(const std::string& name) const;
  pb::ExplainResponse Explain(const pb::ExplainRequest& request) const;
  // Sends the requests over one stream and calls handle with each response as it arrives (completion
  // order; match them by id). A request that failed comes back with its error set (ThrowIfError) and
  // the stream goes on; a failure of the stream itself throws StatusError.
  void ExplainStream(const std::vector<pb::ExplainRequest>& requests,
                     const std::function<void(const pb::ExplainResponse&)>& handle) const;

  // The generated stub, for calls and options this class does not wrap.
  pb::ExplainService::Stub& stub() const { return *stub_; }

 private:
  std::unique_ptr<grpc::ClientContext> Context() const;
  Options options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::ExplainService::Stub> stub_;
};

// Throws StatusError for a stream response whose error is set.
void ThrowIfError(const pb::ExplainResponse& response);

}  // namespace camserve
