// camserve's maps graph (maps.onnx, `camserve export --maps`) on ONNX Runtime: one run takes images and
// targets and returns logits, the resolved targets and the final maps. Shared by the Node.js example
// (maps.js, onnxruntime-node) and the browser page (index.html, onnxruntime-web): pass either `ort`.

/** The model directory's manifest.maps, or an Error saying how to add the graph. */
export function mapsInfo(manifest) {
  if (!manifest.maps || !manifest.graphs || !manifest.graphs.maps) {
    throw new Error(`model ${manifest.name} has no maps graph: camserve export --from-model DIR --maps`);
  }
  return manifest.maps;
}

/**
 * RGBA pixels (width x height, the model's input size) -> the preprocessed image, float32 [3,H,W]:
 * (v / 255 - mean) / std per channel, as camserve preprocesses pixels. camserve resizes other sizes
 * with antialiased bilinear interpolation first; resize images the same way to get its maps exactly.
 */
export function preprocess(rgba, width, height, manifest) {
  const [channels, inputHeight, inputWidth] = manifest.input_size;
  if (width !== inputWidth || height !== inputHeight) {
    throw new Error(`the image is ${width}x${height}; model ${manifest.name} takes ${inputWidth}x${inputHeight}`);
  }
  const plane = width * height;
  const out = new Float32Array(channels * plane);
  for (let c = 0; c < channels; c++) {
    const mean = Math.fround(manifest.mean[c]);
    const std = Math.fround(manifest.std[c]);
    for (let p = 0; p < plane; p++) {
      // float32 steps, as camserve's table: v / 255, minus mean, over std
      out[c * plane + p] = Math.fround(Math.fround(Math.fround(rgba[4 * p + c] / 255) - mean) / std);
    }
  }
  return out;
}

// Target kind codes (camserve.methods.target_kinds.TARGET_KINDS) and each output kind's default kind.
const DEFAULT_KIND = { classification: 0, dense: 4, detection: 5, embedding: 7 };

/** L, the per-target values of the `target_data` input (TargetSpec.data_length). */
function targetDataLength(manifest) {
  const shape = manifest.output_shape || [];
  switch (manifest.output_kind) {
    case 'dense':
      return shape[1] * shape[2];
    case 'detection':
      return 4;
    case 'embedding':
      return shape[0];
    default:
      return 0;
  }
}

/**
 * Runs maps.onnx on N preprocessed images (a Float32Array of N*3*H*W) and targets ([N][T] class ids,
 * -k for the k-th best class). Graphs exported with target kinds also take `target_kinds` [N,T]
 * (`kinds`, default: the output kind's default kind, a classifier's logit) and, for models whose
 * targets carry data, `target_data` [N,T,L] (`data`, a Float32Array; default zeros: a dense model's
 * predicted region). Returns { logits: [N][C], targetIds: [N][T], maps: {method: {dims, data}} }
 * with dims [N,T,H',W'] and data a Float32Array (Uint8Array for uint8 maps).
 */
export async function runMaps(ort, session, manifest, images, targets, kinds = null, data = null) {
  const info = mapsInfo(manifest);
  const n = targets.length;
  const t = targets[0].length;
  const [channels, height, width] = manifest.input_size;
  const feeds = {
    images: new ort.Tensor('float32', images, [n, channels, height, width]),
    targets: new ort.Tensor('int64', BigInt64Array.from(targets.flat(), (v) => BigInt(v)), [n, t]),
  };
  if (info.inputs.includes('target_kinds')) {
    const codes = kinds ? kinds.flat() : new Array(n * t).fill(DEFAULT_KIND[manifest.output_kind || 'classification']);
    feeds.target_kinds = new ort.Tensor('int64', BigInt64Array.from(codes, (v) => BigInt(v)), [n, t]);
  }
  if (info.inputs.includes('target_data')) {
    const length = targetDataLength(manifest);
    feeds.target_data = new ort.Tensor('float32', data || new Float32Array(n * t * length), [n, t, length]);
  }
  const out = await session.run(feeds);
  const rows = (data, columns) => Array.from({ length: n }, (_, i) => Array.from(data.slice(i * columns, (i + 1) * columns), Number));
  const maps = {};
  info.methods.forEach((method, i) => {
    const tensor = out[info.outputs[i + 2]];
    maps[method] = { dims: tensor.dims.map(Number), data: tensor.data };
  });
  return {
    logits: rows(out.logits.data, manifest.class_names.length),
    targetIds: rows(out.target_ids.data, t),
    maps,
  };
}

/** Softmax of one row of logits -> [{classId, name, probability}] sorted, the best `k`. */
export function topClasses(logits, classNames, k = 3) {
  const max = Math.max(...logits);
  const exp = logits.map((v) => Math.exp(v - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  return exp
    .map((v, classId) => ({ classId, name: classNames[classId], probability: v / sum }))
    .sort((a, b) => b.probability - a.probability)
    .slice(0, k);
}

/** Jet colour of v in [0, 1] -> [r, g, b] in 0..255. */
function jet(v) {
  const channel = (x) => Math.round(255 * Math.min(Math.max(1.5 - Math.abs(4 * v - x), 0), 1));
  return [channel(3), channel(2), channel(1)];
}

/** Bilinear sample of a w x h map at (fx, fy), half-pixel centres, clamped to the edges. */
function sample(map, w, h, fx, fy) {
  const x = Math.min(Math.max(fx, 0), w - 1);
  const y = Math.min(Math.max(fy, 0), h - 1);
  const x0 = Math.floor(x);
  const y0 = Math.floor(y);
  const x1 = Math.min(x0 + 1, w - 1);
  const y1 = Math.min(y0 + 1, h - 1);
  const ax = x - x0;
  const ay = y - y0;
  const at = (i, j) => map[j * w + i];
  return (1 - ay) * ((1 - ax) * at(x0, y0) + ax * at(x1, y0)) + ay * ((1 - ax) * at(x0, y1) + ax * at(x1, y1));
}

/**
 * The map (mapWidth x mapHeight values in [0, 1]; pass scale 255 for uint8 maps) blended over the
 * width x height RGBA image in jet colours: a new Uint8ClampedArray of width*height*4.
 */
export function overlay(rgba, width, height, map, mapWidth, mapHeight, alpha = 0.5, scale = 1) {
  const out = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const fx = ((x + 0.5) * mapWidth) / width - 0.5;
      const fy = ((y + 0.5) * mapHeight) / height - 0.5;
      const colour = jet(sample(map, mapWidth, mapHeight, fx, fy) / scale);
      const p = 4 * (y * width + x);
      for (let c = 0; c < 3; c++) out[p + c] = (1 - alpha) * rgba[p + c] + alpha * colour[c];
      out[p + 3] = 255;
    }
  }
  return out;
}
