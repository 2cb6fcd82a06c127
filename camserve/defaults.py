"""The one home of camserve's defaults and hard limits that more than one module reads.

Torch-free and import-free so that the CLI's argument parsers, the gRPC codecs, the Python client and
``camserve.config`` can all read it cheaply. Settings a user may change live in ``camserve.config``
(whose dataclass fields take their values from here); everything else reads the config object.

Default methods: ``("gradcam",)`` everywhere (Python API, CLI, client, both gRPC APIs). Before,
the Python API, the CLI and the client defaulted to Grad-CAM + Grad-CAM++ while both gRPC APIs
defaulted to Grad-CAM alone. Grad-CAM alone won: it is the method every CAM paper compares against,
a service answer with the default methods stays half the size (answer bytes count against
``service.max_message_bytes``), and the wire behaviour of existing service clients does not change.
"""

from __future__ import annotations

#: Methods computed when a request or a call names none.
DEFAULT_METHODS: tuple[str, ...] = ("gradcam",)
# the maps graph's methods (`camserve export --maps`): the gradient methods it can hold (not "cam",
# which needs a GAP -> linear head)
MAPS_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
# the dense model's picture (docs/evaluation.md): a method whose map lights every copy of the class
# for one copy's region, and one that keeps the gradient's place
DENSE_EXAMPLE_METHODS: tuple[str, ...] = ("gradcam", "layercam")
#: The method of docs/targets.md's one-example-per-output-kind picture: Layer-CAM keeps a region or
#: box target on its own copy of the digit, where Grad-CAM's averaged gradients light every copy.
KINDS_EXAMPLE_METHOD = "layercam"

#: "HxW" output sizes beyond this side are refused rather than allocated.
MAX_OUTPUT_SIDE = 8192
#: Smooth Grad-CAM++ noisy copies per image: more would let one request stall a model.
MAX_SMOOTH_N = 256
#: Echoed client strings (model names, request ids) are cut to this many characters in messages/logs.
MAX_ECHO_CHARS = 128

# -- [explain] ---------------------------------------------------------------------------------------
OUTPUT_SIZE = "input"
SMOOTH_N = 8
SMOOTH_SIGMA = 0.15
TOPK_PREDICTIONS = 5
#: aug_smooth: each image also runs flipped left-right, and each of the two scaled by these factors
#: (pytorch-grad-cam's test-time augmentation: ttach HorizontalFlip x Multiply(0.9, 1, 1.1)).
AUG_FACTORS: tuple[float, ...] = (0.9, 1.0, 1.1)
#: Overlays: the colour map and the input's weight in the blend (pytorch-grad-cam's show_cam_on_image
#: defaults: jet, 0.5).
OVERLAY_COLORMAP = "jet"
OVERLAY_IMAGE_WEIGHT = 0.5
#: The colour maps an overlay may use: OpenCV's (pytorch-grad-cam's choices) by their matplotlib names.
OVERLAY_COLORMAPS: tuple[str, ...] = (
    "autumn", "bone", "cividis", "cool", "hot", "hsv", "inferno", "jet", "magma", "ocean", "pink",
    "plasma", "rainbow", "spring", "summer", "turbo", "twilight", "twilight_shifted", "viridis", "winter",
)  # fmt: skip

# -- [runtime] ---------------------------------------------------------------------------------------
MAX_GRAPH_BATCH = 64

# -- [service] ---------------------------------------------------------------------------------------
PORT = 50051
MAX_BATCH_SIZE = 16
MAX_QUEUE_DELAY_MS = 5.0  # how long the batcher waits for a batch to fill
MAX_QUEUE_SIZE = 256  # images waiting per model before requests are refused
GRACE_PERIOD_S = 10.0  # on SIGTERM: time for running calls to finish
#: gRPC message limit of the server and of the Python client (requests and answers).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Admission limits: a request over any of them is refused before any work (docs/service.md).
MAX_REQUEST_IMAGES = 256  # images in one request
MAX_TARGETS_PER_IMAGE = 256  # targets (maps per method) of one image
MAX_REQUEST_PIXELS = 100_000_000  # decoded pixels of one request's images (from their headers)
MAX_IMAGE_WORK_BYTES = 256 * 1024 * 1024  # estimated working memory of one image in a batch
MAX_REQUEST_GRAPH_RUNS = 65_536  # graph runs of one request (explain, noisy copies, Score-CAM, Ablation)
# Memory bounds across requests (docs/service.md, "Limits"):
DECODE_PIXEL_BUDGET = 50_000_000  # decoded image pixels all requests together hold at once
STREAM_MAX_UNREAD = 4  # answers (finished or being computed) a stream holds before it stops reading
# A unary request of at most this many bytes whose images decode to at most INLINE_DECODE_PIXELS in all
# is checked and decoded on the event loop: a hop to a worker thread cost more than the work.
INLINE_REQUEST_BYTES = 64 * 1024
INLINE_DECODE_PIXELS = 256 * 256
# Connections and HTTP/2 (docs/operations.md, "Connections and HTTP/2"), before any call is read:
ACCEPT_COMPRESSED_REQUESTS = False  # gzip/deflate request bodies (inflated before the token check)
MAX_CONCURRENT_STREAMS = 100  # calls open at once on one connection (HTTP/2 MAX_CONCURRENT_STREAMS)
MAX_CONNECTIONS = 512  # open connections of the whole server; more are closed as they arrive
CONNECTION_IDLE_TIMEOUT_S = 120.0  # a connection without a call this long gets GOAWAY
HANDSHAKE_TIMEOUT_S = 10.0  # a new connection must finish its HTTP/2 (and TLS) handshake within this
MAX_HEALTH_SERVICE_CHARS = 1024  # health Check/Watch service names (no token needed); longer: refused
METRICS_CONNECTIONS = 8  # /metrics connections served at once; more are closed as they arrive
METRICS_TIMEOUT_S = 5.0  # a /metrics request must arrive within this

# -- encoded images: service requests and `camserve batch` (camserve/encoded_images.py) ----------------
#: Formats decoded; others (TIFF, BMP, GIF, ...) are refused before decoding (docs/operations.md).
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
MAX_IMAGE_PIXELS = 50_000_000  # decoded pixels of one image: a small file must not expand into gigabytes
#: What decoding and resizing a plain 8-bit image takes per pixel (RGB, its float copy, the resize);
#: the unit of decode costs and of the pixel budget.
DECODE_BYTES_PER_PIXEL = 20
MAX_IMAGE_METADATA = 64  # PNG ancillary chunks, JPEG APPn/COM segments, WebP chunks of one image
MAX_PNG_CHUNKS = 16_384  # chunks of one PNG (libpng writes 8 KiB IDATs: 128 MiB of image data)
MAX_JPEG_SCANS = 32  # scans of one JPEG (libjpeg writes 10 for progressive colour); CPU grows per scan
#: `camserve batch`: image files larger than this are error rows, not read (requests: max_message_bytes).
MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024

# -- camserve eval (camserve.eval.evaluate.EvalSettings and the CLI's flags) ----------------------------
EVAL_SINGLE_IMAGES = 200  # single-instance benchmark images
EVAL_MULTI_IMAGES = 100  # multi-instance benchmark images
EVAL_SANITY_IMAGES = 16  # images of the randomisation sanity check
EVAL_FRACTION = 0.25  # keep/remove top fraction, top-fraction box
EVAL_THRESHOLD = 0.15  # largest-segment box: threshold x max (Grad-CAM)
EVAL_STEPS = 16  # deletion/insertion steps
EVAL_FILL = "black"  # removed pixels: "black" (pixels x map) or "mean"
EVAL_INSERTION_START = "blur"  # "blur" (RISE) or "fill"
EVAL_SEED = 0
EVAL_EXAMPLES = 4  # images of each subset in the figure grid
EVAL_OUT = "report"
