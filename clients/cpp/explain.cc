// camserve-explain (C++): explains images with a camserve server (camserve.v1) and writes each map as a
// PGM image, and optionally every value as JSON. Same flags as the Go example (PGM only).
//
//   camserve-explain --server 127.0.0.1:50051 --out-dir maps digit.png
//   camserve-explain --server HOST:443 --tls --ca-file ca.pem --token-file token.txt \
//       --method gradcam --method gradcam++ --target -1 --target 3 --json maps.json a.png b.png
//   camserve-explain --server 127.0.0.1:50051 --model seg \
//       --target-spec '{"kind": "TARGET_KIND_REGION", "class_id": 3, "box": {"x1": 8, "y1": 8, "x2": 40, "y2": 40}}' a.png
//
// One image goes in one Explain call, several over one ExplainStream. Errors: one line on stderr with
// the gRPC status ("camserve-explain: error: NOT_FOUND: ...") and exit status 2.
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "camserve_client.h"

namespace fs = std::filesystem;
namespace pb = camserve::v1;

namespace {

const char kUsage[] =
    "usage: camserve-explain --server HOST:PORT [--model NAME] [--method M]...\n"
    "    [--target T... | --target-spec JSON...] [--dtype float32|uint8] [--out-dir DIR] [--format pgm]\n"
    "    [--json FILE] [--timeout SECONDS]\n"
    "    [--tls] [--ca-file F] [--client-cert F --client-key F] [--server-name N] [--token-file F]\n"
    "    [--list-models | --info | --tensor FILE --shape 3,H,W | IMAGE...]\n";

struct UsageError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

struct Args {
  std::string server, model, dtype = "float32", out_dir, format = "pgm", json, tensor, shape;
  std::vector<std::string> methods, targets, specs, images;
  bool list_models = false, info = false;
  camserve::Options options;
};

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot read " + path);
  std::ostringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

std::vector<int64_t> ParseInts(const std::vector<std::string>& values, const std::string& flag) {
  std::vector<int64_t> out;
  for (const std::string& v : values) {
    size_t used = 0;
    try {
      out.push_back(std::stoll(v, &used));
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != v.size()) throw UsageError("--" + flag + " " + v + ": expected an integer");
  }
  return out;
}

Args ParseArgs(int argc, char** argv) {
  Args a;
  const std::map<std::string, std::string*> single = {
      {"server", &a.server},   {"model", &a.model},   {"dtype", &a.dtype},
      {"out-dir", &a.out_dir}, {"format", &a.format}, {"json", &a.json},
      {"tensor", &a.tensor},   {"shape", &a.shape},   {"ca-file", &a.options.ca_file},
      {"client-cert", &a.options.cert_file},          {"client-key", &a.options.key_file},
      {"server-name", &a.options.server_name}};
  const std::map<std::string, std::vector<std::string>*> repeated = {{"method", &a.methods},
                                                                     {"target", &a.targets},
                                                                     {"target-spec", &a.specs}};
  const std::map<std::string, bool*> switches = {
      {"tls", &a.options.tls}, {"list-models", &a.list_models}, {"info", &a.info}};
  std::string token_file, timeout = "60";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.size() < 2 || arg[0] != '-') {
      a.images.push_back(arg);
      continue;
    }
    std::string name = arg.substr(arg[1] == '-' ? 2 : 1), value;
    const size_t equals = name.find('=');
    const bool inline_value = equals != std::string::npos;
    if (inline_value) value = name.substr(equals + 1), name = name.substr(0, equals);
    if (name == "h" || name == "help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (switches.count(name)) {
      *switches.at(name) = true;
      continue;
    }
    if (!single.count(name) && !repeated.count(name) && name != "token-file" && name != "timeout") {
      throw UsageError("unknown flag " + arg);
    }
    if (!inline_value) {
      if (i + 1 == argc) throw UsageError(arg + " needs a value");
      value = argv[++i];
    }
    if (single.count(name)) *single.at(name) = value;
    else if (repeated.count(name)) repeated.at(name)->push_back(value);
    else if (name == "token-file") token_file = value;
    else timeout = value;
  }
  if (a.server.empty()) throw UsageError("--server is required");
  if (a.format != "pgm") throw UsageError("--format " + a.format + ": this client writes pgm");
  if (a.dtype != "float32" && a.dtype != "uint8") throw UsageError("--dtype " + a.dtype + ": expected float32 or uint8");
  if (a.tensor.empty() != a.shape.empty()) throw UsageError("--tensor and --shape go together");
  if (!a.tensor.empty() && !a.images.empty()) throw UsageError("give image files or --tensor, not both");
  if (!a.list_models && !a.info && a.tensor.empty() && a.images.empty()) throw UsageError("no image given");
  if (!a.targets.empty() && !a.specs.empty()) throw UsageError("give --target or --target-spec, not both");
  if (a.methods.empty()) a.methods = {"gradcam"};
  char* end = nullptr;
  const double seconds = std::strtod(timeout.c_str(), &end);
  if (end == timeout.c_str() || *end != '\0' || !(seconds > 0)) {
    throw UsageError("--timeout " + timeout + ": expected a positive number of seconds");
  }
  a.options.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  if (!token_file.empty()) {
    std::string token = ReadFile(token_file);
    token.erase(token.find_last_not_of(" \t\r\n") + 1);
    token.erase(0, token.find_first_not_of(" \t\r\n"));
    a.options.token = token;
  }
  return a;
}

// Each --target-spec: a camserve.v1.Target in the protobuf JSON mapping.
std::vector<pb::Target> ParseSpecs(const std::vector<std::string>& values) {
  std::vector<pb::Target> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const auto status = google::protobuf::util::JsonStringToMessage(values[i], &out[i]);
    if (!status.ok()) throw UsageError("--target-spec " + values[i] + ": " + std::string(status.message()));
  }
  return out;
}

// One request's image and the name its outputs are written under.
struct Input {
  std::string name;
  pb::Image image;
};

std::vector<Input> ReadInputs(const Args& a, const std::vector<int64_t>& targets,
                              const std::vector<pb::Target>& specs) {
  if (!a.tensor.empty()) {
    std::vector<std::string> dims;
    std::stringstream shape(a.shape);
    for (std::string d; std::getline(shape, d, ',');) dims.push_back(d);
    pb::Image image;
    // Sent as read: the server checks the byte count against the shape and names a mismatch.
    pb::Tensor* tensor = image.mutable_tensor();
    tensor->set_data(ReadFile(a.tensor));
    for (int64_t d : ParseInts(dims, "shape")) tensor->add_shape(d);
    tensor->set_dtype(pb::DATA_TYPE_FLOAT32);
    for (int64_t t : targets) image.add_targets(t);
    for (const pb::Target& t : specs) *image.add_target_specs() = t;
    return {{fs::path(a.tensor).stem().string(), image}};
  }
  std::vector<Input> inputs;
  for (const std::string& path : a.images) {
    inputs.push_back({fs::path(path).stem().string(), camserve::EncodedImage(ReadFile(path), targets)});
    for (const pb::Target& t : specs) *inputs.back().image.add_target_specs() = t;
  }
  return inputs;
}

std::string ChooseModel(const camserve::Client& client, const std::string& model) {
  if (!model.empty()) return model;
  const std::vector<pb::ModelInfo> models = client.ListModels();
  if (models.size() != 1) {
    std::string names;
    for (const pb::ModelInfo& m : models) names += (names.empty() ? "" : ", ") + m.name();
    throw UsageError("the server serves " + names + ": choose one with --model");
  }
  return models[0].name();
}

// One request per input (one Explain call, or one stream for several); responses in input order.
std::vector<pb::ExplainResponse> Explain(const camserve::Client& client, const Args& a,
                                         const std::string& model, const std::vector<Input>& inputs) {
  std::vector<pb::ExplainRequest> requests(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    requests[i].set_id(std::to_string(i));
    requests[i].set_model(model);
    *requests[i].add_images() = inputs[i].image;
    for (const std::string& m : a.methods) requests[i].add_methods(m);
    if (a.dtype == "uint8") requests[i].mutable_output()->set_dtype(pb::DATA_TYPE_UINT8);
  }
  if (requests.size() == 1) return {client.Explain(requests[0])};
  std::vector<pb::ExplainResponse> replies(requests.size());
  client.ExplainStream(requests, [&](const pb::ExplainResponse& reply) {
    const size_t index = std::stoul(reply.id());
    try {
      camserve::ThrowIfError(reply);
    } catch (const camserve::StatusError& error) {
      throw std::runtime_error(inputs.at(index).name + ": " + error.what());
    }
    replies.at(index) = reply;
  });
  return replies;
}

// A map as 8-bit pixels: uint8 maps as sent; float maps in [0, 1] times 255 (maps with larger values,
// normalize=false, are scaled by their maximum).
std::string Grey(const camserve::Array& values) {
  float scale = 1.0f;
  if (values.dtype != pb::DATA_TYPE_UINT8) {
    float peak = 1.0f;
    for (float v : values.data) peak = std::max(peak, v);
    scale = 255.0f / peak;
  }
  std::string pixels(values.data.size(), '\0');
  for (size_t i = 0; i < values.data.size(); ++i) {
    const double v = std::round(std::min(255.0, std::max(0.0, static_cast<double>(values.data[i] * scale))));
    pixels[i] = static_cast<char>(static_cast<uint8_t>(v));
  }
  return pixels;
}

void WritePgm(const fs::path& path, const camserve::Array& values) {
  if (values.shape.size() != 2) throw std::runtime_error("map is not [H, W]");
  std::ofstream file(path, std::ios::binary);
  file << "P5\n" << values.shape[1] << " " << values.shape[0] << "\n255\n" << Grey(values);
  if (!file) throw std::runtime_error("cannot write " + path.string());
}

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    } else out += static_cast<char>(c);
  }
  return out + "\"";
}

// %.9g: every float32 reads back exactly.
std::string JsonNumber(float value) {
  if (!std::isfinite(value)) return "null";
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", value);
  return text;
}

template <typename T, typename F>
std::string JsonList(const T& items, F format) {
  std::string out = "[";
  bool first = true;
  for (const auto& item : items) out += (first ? "" : ",") + format(item), first = false;
  return out + "]";
}

std::string DtypeName(pb::DataType dtype) {
  if (dtype == pb::DATA_TYPE_UNSPECIFIED) return "float32";
  std::string name = pb::DataType_Name(dtype).substr(10);  // "DATA_TYPE_FLOAT32" -> "FLOAT32"
  std::transform(name.begin(), name.end(), name.begin(), ::tolower);
  return name;
}

// "TARGET_KIND_PROBABILITY" -> "probability", as the Go client writes it.
std::string KindName(int kind) {
  std::string name = pb::TargetKind_Name(static_cast<pb::TargetKind>(kind)).substr(12);
  std::transform(name.begin(), name.end(), name.begin(), ::tolower);
  return name;
}

void PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  std::string text;
  if (!google::protobuf::util::MessageToJsonString(message, &text, options).ok()) {
    throw std::runtime_error("cannot print the reply as JSON");
  }
  std::cout << text;
}

int Run(int argc, char** argv) {
  const Args a = ParseArgs(argc, argv);
  const std::vector<int64_t> targets = ParseInts(a.targets, "target");
  const std::vector<Input> inputs = ReadInputs(a, targets, ParseSpecs(a.specs));
  const camserve::Client client(a.server, a.options);
  if (a.list_models) {
    pb::ListModelsResponse reply;
    for (const pb::ModelInfo& m : client.ListModels()) *reply.add_models() = m;
    PrintJson(reply);
    return 0;
  }
  const std::string model = ChooseModel(client, a.model);
  if (a.info) {
    PrintJson(client.GetModel(model));
    return 0;
  }
  const std::vector<pb::ExplainResponse> replies = Explain(client, a, model, inputs);
  std::vector<std::string> results;
  for (size_t i = 0; i < replies.size(); ++i) {
    if (replies[i].images_size() != 1) {
      throw std::runtime_error(inputs[i].name + ": the server answered " +
                               std::to_string(replies[i].images_size()) + " images for 1");
    }
    const pb::ImageExplanation& image = replies[i].images(0);
    const std::vector<camserve::Map> maps = camserve::Maps(image);
    const camserve::Array logits = camserve::DecodeTensor(image.logits());
    std::string maps_json;
    for (const camserve::Map& m : maps) {
      maps_json += std::string(maps_json.empty() ? "" : ",") + "{\"method\":" + JsonString(m.method) +
                   ",\"target_index\":" + std::to_string(m.target_index) +
                   ",\"class_id\":" + std::to_string(m.class_id) +
                   ",\"shape\":" + JsonList(m.values.shape, [](int64_t d) { return std::to_string(d); }) +
                   ",\"dtype\":" + JsonString(DtypeName(m.values.dtype)) +
                   ",\"data\":" + JsonList(m.values.data, JsonNumber) + "}";
      if (!a.out_dir.empty()) {
        fs::create_directories(a.out_dir);
        WritePgm(fs::path(a.out_dir) / (inputs[i].name + "_" + m.method + "_t" +
                                        std::to_string(m.target_index) + "." + a.format),
                 m.values);
      }
    }
    results.push_back(
        "{\"image\":" + JsonString(inputs[i].name) + ",\"model\":" + JsonString(replies[i].model()) +
        ",\"predictions\":" +
        JsonList(image.predictions(),
                 [](const pb::Prediction& p) {
                   return "{\"class_id\":" + std::to_string(p.class_id()) + ",\"name\":" + JsonString(p.name()) +
                          ",\"probability\":" + JsonNumber(p.probability()) + "}";
                 }) +
        ",\"target_ids\":" + JsonList(image.target_ids(), [](int64_t t) { return std::to_string(t); }) +
        ",\"target_kinds\":" + JsonList(image.target_kinds(), [](int kind) { return JsonString(KindName(kind)); }) +
        ",\"target_scores\":" + JsonList(image.target_scores(), JsonNumber) + ",\"logits\":" + JsonList(logits.data, JsonNumber) + ",\"maps\":[" + maps_json + "]}");
    const pb::Prediction& best = image.predictions(0);
    std::printf("%s: predicted %s (p = %.3f); %zu map(s)\n", inputs[i].name.c_str(), best.name().c_str(),
                best.probability(), maps.size());
  }
  if (!a.json.empty()) {
    std::ofstream file(a.json, std::ios::binary);
    file << JsonList(results, [](const std::string& r) { return r; });
    if (!file) throw std::runtime_error("cannot write " + a.json);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const UsageError& error) {
    std::cerr << kUsage << "camserve-explain: error: " << error.what() << "\n";
  } catch (const std::exception& error) {
    std::cerr << "camserve-explain: error: " << error.what() << "\n";
  }
  return 2;
}
