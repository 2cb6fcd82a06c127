package dev.camserve.client;

import dev.camserve.v1.ExplainRequest;
import dev.camserve.v1.ExplainResponse;
import dev.camserve.v1.ImageExplanation;
import io.grpc.StatusRuntimeException;
import java.nio.file.Files;
import java.nio.file.Paths;

/** Explains one PNG with Grad-CAM and prints where the map peaks: the smallest use of the Java client. */
public final class Example {
  public static void main(String[] args) throws Exception {
    CamserveClient.Options options = new CamserveClient.Options();
    options.token = System.getenv("CAMSERVE_TOKEN");
    try (CamserveClient client = new CamserveClient(args[0], options)) {
      ExplainRequest request =
          ExplainRequest.newBuilder()
              .setModel("digits")
              .addMethods("gradcam")
              .addImages(CamserveClient.encodedImage(Files.readAllBytes(Paths.get(args[1])), -1)) // best class
              .build();
      ExplainResponse reply = client.explain(request);
      ImageExplanation image = reply.getImages(0);
      CamserveClient.Map map = CamserveClient.maps(image).get(0);
      float[] values = map.values.data; // [H, W] row-major
      int peak = 0;
      for (int i = 0; i < values.length; i++) if (values[i] > values[peak]) peak = i;
      long width = map.values.shape[1];
      System.out.printf("class %d: %s map [%d %d] peaks at row %d, column %d%n", image.getTargetIds(0),
          map.method, map.values.shape[0], width, peak / width, peak % width);
    } catch (StatusRuntimeException error) {
      System.err.println(CamserveClient.statusText(error)); // e.g. "NOT_FOUND: model 'x' is not served here"
      System.exit(1);
    }
  }
}
