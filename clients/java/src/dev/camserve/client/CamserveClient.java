package dev.camserve.client;

import dev.camserve.v1.DataType;
import dev.camserve.v1.ExplainRequest;
import dev.camserve.v1.ExplainResponse;
import dev.camserve.v1.ExplainServiceGrpc;
import dev.camserve.v1.GetModelRequest;
import dev.camserve.v1.Image;
import dev.camserve.v1.ImageExplanation;
import dev.camserve.v1.ListModelsRequest;
import dev.camserve.v1.ModelInfo;
import dev.camserve.v1.Tensor;
import com.google.protobuf.ByteString;
import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;

/**
 * Java client of the camserve.v1 gRPC explanation service: connects (plaintext, TLS or mTLS, with an
 * optional bearer token), calls Explain, ExplainStream, ListModels and GetModel, and decodes the maps
 * the service sends as raw little-endian bytes into float values with their shape.
 *
 * <p>A failed call throws io.grpc.StatusRuntimeException: getStatus().getCode() (NOT_FOUND, ...) and
 * getStatus().getDescription() are the server's code and message.
 */
public final class CamserveClient implements AutoCloseable {
  /** Bounds the replies the client accepts (maps of many images are large). */
  public static final int DEFAULT_MAX_MESSAGE_BYTES = 64 << 20;

  /** Options of a connection; the defaults are a plaintext connection without a token. */
  public static final class Options {
    public boolean tls; // speak TLS (implied by caFile, certFile or keyFile)
    public String caFile; // PEM CA that verifies the server; null: the system's roots
    public String certFile; // PEM client certificate for mTLS (with keyFile)
    public String keyFile; // PEM PKCS#8 key of certFile
    public String serverName; // name the server's certificate is checked against
    public String token; // bearer token sent as "authorization: Bearer <token>" with every call
    public long timeoutMillis = 60_000; // deadline of each call (of a whole stream)
    public int maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES;
  }

  /** A decoded Tensor: C-order values with their shape (float16 and uint8 widened to float). */
  public static final class Array {
    public final long[] shape;
    public final float[] data;
    public final DataType dtype; // as sent; DATA_TYPE_UNSPECIFIED is float32

    Array(long[] shape, float[] data, DataType dtype) {
      this.shape = shape;
      this.data = data;
      this.dtype = dtype;
    }
  }

  /** One decoded map of an image: for target targetIndex (class classId) by method, shape [H, W]. */
  public static final class Map {
    public final String method;
    public final int targetIndex;
    public final long classId;
    public final Array values;

    Map(String method, int targetIndex, long classId, Array values) {
      this.method = method;
      this.targetIndex = targetIndex;
      this.classId = classId;
      this.values = values;
    }
  }

  private final ManagedChannel channel;
  private final Options options;
  private final ExplainServiceGrpc.ExplainServiceBlockingStub blocking;
  private final ExplainServiceGrpc.ExplainServiceStub async;

  public CamserveClient(String address, Options options) throws IOException {
    this.options = options;
    ChannelCredentials credentials;
    if (options.tls || options.caFile != null || options.certFile != null || options.keyFile != null) {
      if ((options.certFile == null) != (options.keyFile == null)) {
        throw new IllegalArgumentException(
            "a client certificate needs its key: set certFile and keyFile, or neither");
      }
      TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder();
      if (options.caFile != null) tls.trustManager(new File(options.caFile));
      if (options.certFile != null) tls.keyManager(new File(options.certFile), new File(options.keyFile));
      credentials = tls.build();
    } else if (options.serverName != null) {
      throw new IllegalArgumentException("serverName is only used with TLS");
    } else {
      credentials = InsecureChannelCredentials.create();
    }
    ManagedChannelBuilder<?> builder =
        Grpc.newChannelBuilder(address, credentials).maxInboundMessageSize(options.maxMessageBytes);
    if (options.serverName != null) builder.overrideAuthority(options.serverName);
    channel = builder.build();
    ExplainServiceGrpc.ExplainServiceBlockingStub blockingStub = ExplainServiceGrpc.newBlockingStub(channel);
    ExplainServiceGrpc.ExplainServiceStub asyncStub = ExplainServiceGrpc.newStub(channel);
    if (options.token != null && !options.token.isEmpty()) {
      // Metadata rather than call credentials: the server decides whether a token may travel in plaintext.
      Metadata headers = new Metadata();
      headers.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + options.token);
      blockingStub = blockingStub.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
      asyncStub = asyncStub.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
    }
    blocking = blockingStub;
    async = asyncStub;
  }

  private ExplainServiceGrpc.ExplainServiceBlockingStub call() {
    return blocking.withDeadlineAfter(options.timeoutMillis, TimeUnit.MILLISECONDS);
  }

  public List<ModelInfo> listModels() {
    return call().listModels(ListModelsRequest.getDefaultInstance()).getModelsList();
  }

  public ModelInfo getModel(String name) {
    return call().getModel(GetModelRequest.newBuilder().setName(name).build());
  }

  public ExplainResponse explain(ExplainRequest request) {
    return call().explain(request);
  }

  /**
   * Sends the requests over one stream and hands each response to handle as it arrives (completion
   * order; match them by id). A request that failed comes back with its error set (throwIfError) and the
   * stream goes on; a failure of the stream itself throws StatusRuntimeException.
   */
  public void explainStream(List<ExplainRequest> requests, Consumer<ExplainResponse> handle)
      throws InterruptedException {
    LinkedBlockingQueue<Object> events = new LinkedBlockingQueue<>();
    Object done = new Object();
    StreamObserver<ExplainRequest> sender =
        async
            .withDeadlineAfter(options.timeoutMillis, TimeUnit.MILLISECONDS)
            .explainStream(
                new StreamObserver<ExplainResponse>() {
                  @Override
                  public void onNext(ExplainResponse response) {
                    events.add(response);
                  }

                  @Override
                  public void onError(Throwable error) {
                    events.add(error);
                  }

                  @Override
                  public void onCompleted() {
                    events.add(done);
                  }
                });
    for (ExplainRequest request : requests) sender.onNext(request);
    sender.onCompleted();
    while (true) {
      Object event = events.take();
      if (event == done) return;
      if (event instanceof Throwable) throw Status.fromThrowable((Throwable) event).asRuntimeException();
      try {
        handle.accept((ExplainResponse) event);
      } catch (RuntimeException error) {
        sender.onError(Status.CANCELLED.withDescription("the client stopped reading").asRuntimeException());
        throw error;
      }
    }
  }

  /** Throws StatusRuntimeException for a stream response whose error is set. */
  public static void throwIfError(ExplainResponse response) {
    if (response.hasError()) {
      throw Status.fromCodeValue(response.getError().getCode())
          .withDescription(response.getError().getMessage())
          .asRuntimeException();
    }
  }

  /** "CODE: message", as the other camserve clients print a status. */
  public static String statusText(StatusRuntimeException error) {
    Status status = error.getStatus();
    return status.getCode() + ": " + (status.getDescription() == null ? "" : status.getDescription());
  }

  /** An image given as PNG or JPEG file contents, with the classes to explain (-k: k-th best). */
  public static Image encodedImage(byte[] contents, long... targets) {
    Image.Builder image = Image.newBuilder().setEncoded(ByteString.copyFrom(contents));
    for (long t : targets) image.addTargets(t);
    return image.build();
  }

  /** The Tensor of float32 values (C order) with the given shape, little-endian. */
  public static Tensor encodeFloat32(float[] values, long... shape) {
    ByteBuffer raw = ByteBuffer.allocate(4 * values.length).order(ByteOrder.LITTLE_ENDIAN);
    for (float v : values) raw.putFloat(v);
    Tensor.Builder tensor = Tensor.newBuilder().setData(ByteString.copyFrom(raw.array()));
    for (long d : shape) tensor.addShape(d);
    return tensor.setDtype(DataType.DATA_TYPE_FLOAT32).build();
  }

  /** Decodes raw little-endian bytes; IllegalArgumentException names what does not fit. */
  public static Array decodeTensor(Tensor tensor) {
    int size;
    switch (tensor.getDtypeValue()) {
      case DataType.DATA_TYPE_UNSPECIFIED_VALUE:
      case DataType.DATA_TYPE_FLOAT32_VALUE:
        size = 4;
        break;
      case DataType.DATA_TYPE_FLOAT16_VALUE:
        size = 2;
        break;
      case DataType.DATA_TYPE_UINT8_VALUE:
        size = 1;
        break;
      default:
        throw new IllegalArgumentException("unknown tensor data type " + tensor.getDtypeValue());
    }
    long[] shape = new long[tensor.getShapeCount()];
    long count = 1;
    for (int i = 0; i < shape.length; i++) {
      shape[i] = tensor.getShape(i);
      if (shape[i] < 0) {
        throw new IllegalArgumentException("tensor dimensions must be >= 0, got " + tensor.getShapeList());
      }
      count *= shape[i];
    }
    ByteBuffer raw = tensor.getData().asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
    if (raw.remaining() != count * size) {
      throw new IllegalArgumentException(
          "tensor of shape " + tensor.getShapeList() + " holds " + raw.remaining() + " bytes, expected "
              + count * size);
    }
    float[] data = new float[(int) count];
    for (int i = 0; i < data.length; i++) {
      if (size == 4) data[i] = raw.getFloat(4 * i);
      else if (size == 2) data[i] = float16(raw.getShort(2 * i));
      else data[i] = raw.get(i) & 0xff;
    }
    DataType dtype = tensor.getDtype();
    return new Array(shape, data, dtype);
  }

  /** IEEE 754 half-precision bits widened to float (exact). */
  static float float16(short bits) {
    float sign = (bits & 0x8000) != 0 ? -1f : 1f;
    int exponent = (bits >> 10) & 0x1f;
    float fraction = (bits & 0x3ff) / 1024f;
    if (exponent == 0) return sign * (float) Math.scalb(fraction, -14);
    if (exponent == 0x1f) return fraction != 0 ? Float.NaN : sign * Float.POSITIVE_INFINITY;
    return sign * (float) Math.scalb(1 + fraction, exponent - 15);
  }

  /** An image's maps, in the response's order (target-major, then method). */
  public static List<Map> maps(ImageExplanation image) {
    List<Map> maps = new ArrayList<>();
    for (dev.camserve.v1.Map m : image.getMapsList()) {
      maps.add(new Map(m.getMethod(), m.getTargetIndex(), m.getClassId(), decodeTensor(m.getData())));
    }
    return maps;
  }

  @Override
  public void close() throws InterruptedException {
    channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }
}
