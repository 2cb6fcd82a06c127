package dev.camserve.client;

import com.google.protobuf.ByteString;
import dev.camserve.v1.DataType;
import dev.camserve.v1.Error;
import dev.camserve.v1.ExplainResponse;
import dev.camserve.v1.Tensor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.util.Arrays;

/** Unit checks of the tensor convention and status names (no server): run by tests/clients. */
final class TensorChecks {
  private static int failures = 0;

  private static void check(boolean condition, String what) {
    if (!condition) {
      System.err.println("failed: " + what);
      failures++;
    }
  }

  private static Tensor tensor(byte[] raw, DataType dtype, long... shape) {
    Tensor.Builder t = Tensor.newBuilder().setData(ByteString.copyFrom(raw)).setDtype(dtype);
    for (long d : shape) t.addShape(d);
    return t.build();
  }

  private static String errorOf(Tensor tensor) {
    try {
      CamserveClient.decodeTensor(tensor);
    } catch (IllegalArgumentException error) {
      return error.getMessage();
    }
    return "";
  }

  public static void main(String[] args) {
    // 1.0 = 0x3f800000, -2.5 = 0xc0200000: least significant byte first.
    byte[] raw = {0, 0, (byte) 0x80, 0x3f, 0, 0, 0x20, (byte) 0xc0};
    CamserveClient.Array floats = CamserveClient.decodeTensor(tensor(raw, DataType.DATA_TYPE_UNSPECIFIED, 1, 2));
    check(Arrays.equals(floats.data, new float[] {1f, -2.5f}), "float32 little-endian");
    check(Arrays.equals(floats.shape, new long[] {1, 2}), "shape");
    check(Arrays.equals(CamserveClient.encodeFloat32(new float[] {1f, -2.5f}, 1, 2).getData().toByteArray(), raw), "encode");
    // 0x3c00 = 1, 0xc000 = -2, 0x0001 = 2^-24 (smallest subnormal), 0x7bff = 65504, 0xfc00 = -inf.
    byte[] halves = {0, 0x3c, 0, (byte) 0xc0, 1, 0, (byte) 0xff, 0x7b, 0, (byte) 0xfc};
    float[] widened = CamserveClient.decodeTensor(tensor(halves, DataType.DATA_TYPE_FLOAT16, 5)).data;
    check(Arrays.equals(widened, new float[] {1f, -2f, Math.scalb(1f, -24), 65504f, Float.NEGATIVE_INFINITY}), "float16");
    float[] bytes = CamserveClient.decodeTensor(tensor(new byte[] {0, (byte) 128, (byte) 255}, DataType.DATA_TYPE_UINT8, 3)).data;
    check(bytes[1] == 128f && bytes[2] == 255f, "uint8");
    check(errorOf(tensor(new byte[12], DataType.DATA_TYPE_FLOAT32, 2, 2)).equals("tensor of shape [2, 2] holds 12 bytes, expected 16"), "byte count");
    check(errorOf(tensor(new byte[0], DataType.DATA_TYPE_FLOAT32, -1)).contains(">= 0"), "negative dimension");
    check(errorOf(Tensor.newBuilder().setDtypeValue(9).build()).equals("unknown tensor data type 9"), "unknown dtype");
    ExplainResponse failed = ExplainResponse.newBuilder().setError(Error.newBuilder().setCode(3).setMessage("images[0].tensor.data: holds 4 bytes")).build();
    try {
      CamserveClient.throwIfError(failed);
      check(false, "throwIfError throws");
    } catch (StatusRuntimeException error) {
      check(error.getStatus().getCode() == Status.Code.INVALID_ARGUMENT, "code");
      check(CamserveClient.statusText(error).equals("INVALID_ARGUMENT: images[0].tensor.data: holds 4 bytes"), "statusText");
    }
    CamserveClient.throwIfError(ExplainResponse.getDefaultInstance()); // no error set: no throw
    System.out.println(failures == 0 ? "ok" : "FAILED");
    System.exit(failures == 0 ? 0 : 1);
  }
}
