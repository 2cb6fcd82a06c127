package dev.camserve.client;

import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.MessageOrBuilder;
import com.google.protobuf.util.JsonFormat;
import dev.camserve.v1.DataType;
import dev.camserve.v1.ExplainRequest;
import dev.camserve.v1.ExplainResponse;
import dev.camserve.v1.Image;
import dev.camserve.v1.ImageExplanation;
import dev.camserve.v1.ListModelsResponse;
import dev.camserve.v1.ModelInfo;
import dev.camserve.v1.OutputOptions;
import dev.camserve.v1.Prediction;
import dev.camserve.v1.Target;
import dev.camserve.v1.TargetKind;
import dev.camserve.v1.Tensor;
import io.grpc.StatusRuntimeException;
import java.awt.image.BufferedImage;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import javax.imageio.ImageIO;

/**
 * camserve-explain (Java): explains images with a camserve server and writes each map as a PNG or PGM
 * image, and optionally every value as JSON. Same flags as the Go and C++ commands. One image goes in
 * one Explain call, several over one ExplainStream. Errors: one line on stderr with the gRPC status
 * ("camserve-explain: error: NOT_FOUND: ...") and exit status 2.
 */
public final class ExplainCommand {
  static final String USAGE =
      "usage: camserve-explain --server HOST:PORT [--model NAME] [--method M]...\n"
          + "    [--target T... | --target-spec JSON...] [--dtype float32|uint8] [--out-dir DIR] [--format png|pgm]\n"
          + "    [--json FILE] [--timeout SECONDS]\n"
          + "    [--tls] [--ca-file F] [--client-cert F --client-key F] [--server-name N] [--token-file F]\n"
          + "    [--list-models | --info | --tensor FILE --shape 3,H,W | IMAGE...]\n";

  static final class UsageError extends IllegalArgumentException {
    UsageError(String message) {
      super(message);
    }
  }

  String server, model, dtype = "float32", outDir, format = "png", json, tensor, shape;
  final List<String> methods = new ArrayList<>(), targets = new ArrayList<>(), specs = new ArrayList<>(), images = new ArrayList<>();
  boolean listModels, info;
  final CamserveClient.Options options = new CamserveClient.Options();

  void parse(String[] argv) throws IOException {
    String tokenFile = null, timeout = "60";
    for (int i = 0; i < argv.length; i++) {
      String arg = argv[i];
      if (arg.length() < 2 || arg.charAt(0) != '-') {
        images.add(arg);
        continue;
      }
      String name = arg.substring(arg.startsWith("--") ? 2 : 1), value = null;
      int equals = name.indexOf('=');
      if (equals >= 0) {
        value = name.substring(equals + 1);
        name = name.substring(0, equals);
      }
      switch (name) {
        case "h":
        case "help":
          System.out.print(USAGE);
          System.exit(0);
          break;
        case "tls":
          options.tls = true;
          continue;
        case "list-models":
          listModels = true;
          continue;
        case "info":
          info = true;
          continue;
        default:
          break;
      }
      if (value == null) {
        if (i + 1 == argv.length) throw new UsageError(arg + " needs a value");
        value = argv[++i];
      }
      switch (name) {
        case "server": server = value; break;
        case "model": model = value; break;
        case "dtype": dtype = value; break;
        case "out-dir": outDir = value; break;
        case "format": format = value; break;
        case "json": json = value; break;
        case "tensor": tensor = value; break;
        case "shape": shape = value; break;
        case "method": methods.add(value); break;
        case "target": targets.add(value); break;
        case "target-spec": specs.add(value); break;
        case "ca-file": options.caFile = value; break;
        case "client-cert": options.certFile = value; break;
        case "client-key": options.keyFile = value; break;
        case "server-name": options.serverName = value; break;
        case "token-file": tokenFile = value; break;
        case "timeout": timeout = value; break;
        default: throw new UsageError("unknown flag " + arg);
      }
    }
    if (server == null) throw new UsageError("--server is required");
    if (!format.equals("png") && !format.equals("pgm")) throw new UsageError("--format " + format + ": expected png or pgm");
    if (!dtype.equals("float32") && !dtype.equals("uint8")) throw new UsageError("--dtype " + dtype + ": expected float32 or uint8");
    if ((tensor == null) != (shape == null)) throw new UsageError("--tensor and --shape go together");
    if (tensor != null && !images.isEmpty()) throw new UsageError("give image files or --tensor, not both");
    if (!listModels && !info && tensor == null && images.isEmpty()) throw new UsageError("no image given");
    if (!targets.isEmpty() && !specs.isEmpty()) throw new UsageError("give --target or --target-spec, not both");
    if (methods.isEmpty()) methods.add("gradcam");
    double seconds;
    try {
      seconds = Double.parseDouble(timeout);
    } catch (NumberFormatException error) {
      seconds = -1;
    }
    if (!(seconds > 0)) throw new UsageError("--timeout " + timeout + ": expected a positive number of seconds");
    options.timeoutMillis = (long) (seconds * 1000);
    if (tokenFile != null) options.token = Files.readString(Paths.get(tokenFile)).trim();
  }

  static long[] parseLongs(List<String> values, String flag) {
    long[] out = new long[values.size()];
    for (int i = 0; i < out.length; i++) {
      try {
        out[i] = Long.parseLong(values.get(i).trim());
      } catch (NumberFormatException error) {
        throw new UsageError("--" + flag + " " + values.get(i) + ": expected an integer");
      }
    }
    return out;
  }

  /** Each --target-spec: a camserve.v1.Target in the protobuf JSON mapping. */
  static List<Target> parseSpecs(List<String> values) {
    List<Target> out = new ArrayList<>();
    for (String value : values) {
      Target.Builder target = Target.newBuilder();
      try {
        JsonFormat.parser().merge(value, target);
      } catch (InvalidProtocolBufferException | RuntimeException error) {
        throw new UsageError("--target-spec " + value + ": " + error.getMessage());
      }
      out.add(target.build());
    }
    return out;
  }

  static String stem(String path) {
    String base = Paths.get(path).getFileName().toString();
    int dot = base.lastIndexOf('.');
    return dot > 0 ? base.substring(0, dot) : base;
  }

  /** A map as 8-bit pixels: uint8 maps as sent; float maps in [0, 1] times 255 (larger: by their max). */
  static int[] grey(CamserveClient.Array values) {
    float scale = 1f;
    if (values.dtype != DataType.DATA_TYPE_UINT8) {
      float peak = 1f;
      for (float v : values.data) peak = Math.max(peak, v);
      scale = 255f / peak;
    }
    int[] pixels = new int[values.data.length];
    for (int i = 0; i < pixels.length; i++) {
      pixels[i] = (int) Math.round(Math.min(255.0, Math.max(0.0, (double) (values.data[i] * scale))));
    }
    return pixels;
  }

  static void writeMap(Path path, String format, CamserveClient.Array values) throws IOException {
    if (values.shape.length != 2) throw new IOException("map is not [H, W]");
    int height = (int) values.shape[0], width = (int) values.shape[1];
    int[] pixels = grey(values);
    if (format.equals("pgm")) {
      byte[] header = String.format("P5\n%d %d\n255\n", width, height).getBytes(StandardCharsets.US_ASCII);
      byte[] body = new byte[pixels.length];
      for (int i = 0; i < pixels.length; i++) body[i] = (byte) pixels[i];
      byte[] file = new byte[header.length + body.length];
      System.arraycopy(header, 0, file, 0, header.length);
      System.arraycopy(body, 0, file, header.length, body.length);
      Files.write(path, file);
      return;
    }
    BufferedImage image = new BufferedImage(width, height, BufferedImage.TYPE_BYTE_GRAY);
    image.getRaster().setPixels(0, 0, width, height, pixels);
    ImageIO.write(image, "png", path.toFile());
  }

  static String jsonString(String text) {
    StringBuilder out = new StringBuilder("\"");
    for (char c : text.toCharArray()) {
      if (c == '"' || c == '\\') out.append('\\').append(c);
      else if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
      else out.append(c);
    }
    return out.append('"').toString();
  }

  /** Float.toString gives the shortest text that reads back as the same float32. */
  static String jsonNumber(float value) {
    return Float.isFinite(value) ? Float.toString(value) : "null";
  }

  static String jsonFloats(float[] values) {
    StringBuilder out = new StringBuilder("[");
    for (int i = 0; i < values.length; i++) out.append(i == 0 ? "" : ",").append(jsonNumber(values[i]));
    return out.append(']').toString();
  }

  static String jsonLongs(Iterable<Long> values) {
    StringBuilder out = new StringBuilder("[");
    for (long v : values) out.append(out.length() == 1 ? "" : ",").append(v);
    return out.append(']').toString();
  }

  static String dtypeName(DataType dtype) {
    if (dtype == DataType.DATA_TYPE_UNSPECIFIED) return "float32";
    return dtype.name().substring("DATA_TYPE_".length()).toLowerCase(Locale.ROOT);
  }

  static void printJson(MessageOrBuilder message) throws IOException {
    System.out.println(JsonFormat.printer().preservingProtoFieldNames().print(message));
  }

  int run() throws Exception {
    long[] targetIds = parseLongs(targets, "target");
    List<Target> targetSpecs = parseSpecs(specs);
    List<Image> inputs = new ArrayList<>();
    List<String> names = new ArrayList<>();
    if (tensor != null) {
      Tensor.Builder raw = Tensor.newBuilder().setData(ByteString.copyFrom(Files.readAllBytes(Paths.get(tensor))));
      for (long d : parseLongs(List.of(shape.split(",")), "shape")) raw.addShape(d);
      // Sent as read: the server checks the byte count against the shape and names a mismatch.
      Image.Builder image = Image.newBuilder().setTensor(raw.setDtype(DataType.DATA_TYPE_FLOAT32));
      for (long t : targetIds) image.addTargets(t);
      inputs.add(image.addAllTargetSpecs(targetSpecs).build());
      names.add(stem(tensor));
    }
    for (String path : images) {
      Image image = CamserveClient.encodedImage(Files.readAllBytes(Paths.get(path)), targetIds);
      inputs.add(image.toBuilder().addAllTargetSpecs(targetSpecs).build());
      names.add(stem(path));
    }
    try (CamserveClient client = new CamserveClient(server, options)) {
      if (listModels) {
        printJson(ListModelsResponse.newBuilder().addAllModels(client.listModels()));
        return 0;
      }
      String chosen = model;
      if (chosen == null) {
        List<ModelInfo> models = client.listModels();
        if (models.size() != 1) {
          List<String> served = new ArrayList<>();
          for (ModelInfo m : models) served.add(m.getName());
          throw new UsageError("the server serves " + String.join(", ", served) + ": choose one with --model");
        }
        chosen = models.get(0).getName();
      }
      if (info) {
        printJson(client.getModel(chosen));
        return 0;
      }
      List<ExplainRequest> requests = new ArrayList<>();
      for (int i = 0; i < inputs.size(); i++) {
        ExplainRequest.Builder request =
            ExplainRequest.newBuilder().setId(Integer.toString(i)).setModel(chosen).addImages(inputs.get(i)).addAllMethods(methods);
        if (dtype.equals("uint8")) request.setOutput(OutputOptions.newBuilder().setDtype(DataType.DATA_TYPE_UINT8));
        requests.add(request.build());
      }
      ExplainResponse[] replies = new ExplainResponse[requests.size()];
      if (requests.size() == 1) {
        replies[0] = client.explain(requests.get(0));
      } else {
        client.explainStream(
            requests,
            reply -> {
              int index = Integer.parseInt(reply.getId());
              try {
                CamserveClient.throwIfError(reply);
              } catch (StatusRuntimeException error) {
                throw new IllegalStateException(names.get(index) + ": " + CamserveClient.statusText(error));
              }
              replies[index] = reply;
            });
      }
      List<String> results = new ArrayList<>();
      for (int i = 0; i < replies.length; i++) {
        if (replies[i].getImagesCount() != 1) {
          throw new IllegalStateException(names.get(i) + ": the server answered " + replies[i].getImagesCount() + " images for 1");
        }
        ImageExplanation image = replies[i].getImages(0);
        List<CamserveClient.Map> maps = CamserveClient.maps(image);
        StringBuilder mapsJson = new StringBuilder();
        for (CamserveClient.Map m : maps) {
          List<Long> dims = new ArrayList<>();
          for (long d : m.values.shape) dims.add(d);
          mapsJson.append(mapsJson.length() == 0 ? "" : ",")
              .append("{\"method\":").append(jsonString(m.method))
              .append(",\"target_index\":").append(m.targetIndex)
              .append(",\"class_id\":").append(m.classId)
              .append(",\"shape\":").append(jsonLongs(dims))
              .append(",\"dtype\":").append(jsonString(dtypeName(m.values.dtype)))
              .append(",\"data\":").append(jsonFloats(m.values.data)).append('}');
          if (outDir != null) {
            Files.createDirectories(Paths.get(outDir));
            String file = names.get(i) + "_" + m.method + "_t" + m.targetIndex + "." + format;
            writeMap(Paths.get(outDir, file), format, m.values);
          }
        }
        StringBuilder predictions = new StringBuilder();
        for (Prediction p : image.getPredictionsList()) {
          predictions.append(predictions.length() == 0 ? "" : ",")
              .append("{\"class_id\":").append(p.getClassId())
              .append(",\"name\":").append(jsonString(p.getName()))
              .append(",\"probability\":").append(jsonNumber(p.getProbability())).append('}');
        }
        // "TARGET_KIND_PROBABILITY" -> "probability", as the Go client writes it
        List<String> kinds = new ArrayList<>();
        for (TargetKind kind : image.getTargetKindsList()) {
          kinds.add(jsonString(kind.name().substring("TARGET_KIND_".length()).toLowerCase(Locale.ROOT)));
        }
        float[] scores = new float[image.getTargetScoresCount()];
        for (int s = 0; s < scores.length; s++) scores[s] = image.getTargetScores(s);
        results.add("{\"image\":" + jsonString(names.get(i)) + ",\"model\":" + jsonString(replies[i].getModel())
            + ",\"predictions\":[" + predictions + "],\"target_ids\":" + jsonLongs(image.getTargetIdsList())
            + ",\"target_kinds\":[" + String.join(",", kinds) + "],\"target_scores\":" + jsonFloats(scores)
            + ",\"logits\":" + jsonFloats(CamserveClient.decodeTensor(image.getLogits()).data)
            + ",\"maps\":[" + mapsJson + "]}");
        Prediction best = image.getPredictions(0);
        System.out.printf(Locale.ROOT, "%s: predicted %s (p = %.3f); %d map(s)%n", names.get(i), best.getName(), best.getProbability(), maps.size());
      }
      if (json != null) Files.writeString(Paths.get(json), "[" + String.join(",", results) + "]");
    }
    return 0;
  }

  public static void main(String[] argv) {
    ExplainCommand command = new ExplainCommand();
    int status;
    try {
      command.parse(argv);
      status = command.run();
    } catch (UsageError error) {
      System.err.print(USAGE);
      System.err.println("camserve-explain: error: " + error.getMessage());
      status = 2;
    } catch (StatusRuntimeException error) {
      System.err.println("camserve-explain: error: " + CamserveClient.statusText(error));
      status = 2;
    } catch (Exception error) {
      System.err.println("camserve-explain: error: " + error.getMessage());
      status = 2;
    }
    System.exit(status);
  }
}
