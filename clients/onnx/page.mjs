// The page's logic: load the model's manifest and maps.onnx, then on each image run the maps graph
// with onnxruntime-web and draw one overlay per (target, method). The numbers are also written into
// #result as JSON (and body[data-state] set to "done" or "error") for tests and other scripts.
import * as ort from './node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';
import { mapsInfo, overlay, preprocess, runMaps, topClasses } from './camserve-maps.mjs';

const params = new URLSearchParams(location.search);
const modelUrl = new URL(params.get('model') || 'model/', location.href);
const status = document.getElementById('status');
ort.env.wasm.numThreads = 1; // threads need a cross-origin isolated page; one is plenty for small models
ort.env.wasm.wasmPaths = new URL('node_modules/onnxruntime-web/dist/', location.href).href;

function fail(err) {
  status.textContent = `error: ${err.message}`;
  document.body.dataset.state = 'error';
}

function parseTargets(text) {
  const targets = text.split(',').map((t) => t.trim()).filter((t) => t !== '');
  if (targets.length === 0 || !targets.every((t) => /^-?\d+$/.test(t))) {
    throw new Error(`targets: expected class ids or -k, comma separated, got "${text}"`);
  }
  return targets.map(Number);
}

/** The image's RGBA pixels at the model's input size (the canvas resizes other sizes). */
function pixels(bitmap, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d');
  context.drawImage(bitmap, 0, 0, width, height);
  return context.getImageData(0, 0, width, height).data;
}

async function explain(model, bitmap) {
  const { manifest, session } = model;
  const [, height, width] = manifest.input_size;
  const rgba = pixels(bitmap, width, height);
  const targets = parseTargets(document.getElementById('targets').value);
  const started = performance.now();
  const result = await runMaps(ort, session, manifest, preprocess(rgba, width, height, manifest), [targets]);
  const elapsed = performance.now() - started;
  const best = topClasses(result.logits[0], manifest.class_names)[0];
  status.textContent = `predicted ${best.name} (p=${best.probability.toFixed(3)}), ` +
    `targets ${result.targetIds[0].join(', ')}; maps in ${elapsed.toFixed(0)} ms`;
  const figures = document.getElementById('maps');
  figures.replaceChildren();
  const maps = {};
  const scale = manifest.maps.dtype === 'uint8' ? 255 : 1;
  for (const [method, { dims, data }] of Object.entries(result.maps)) {
    const [, t, h, w] = dims;
    maps[method] = [];
    for (let k = 0; k < t; k++) {
      const map = data.slice(k * h * w, (k + 1) * h * w);
      maps[method].push(Array.from(map));
      const canvas = document.createElement('canvas');
      canvas.width = width;
      canvas.height = height;
      const blended = overlay(rgba, width, height, map, w, h, 0.5, scale);
      canvas.getContext('2d').putImageData(new ImageData(blended, width, height), 0, 0);
      const figure = document.createElement('figure');
      const caption = document.createElement('figcaption');
      caption.textContent = `${method}, class ${manifest.class_names[result.targetIds[0][k]]}`;
      figure.append(canvas, caption);
      figures.append(figure);
    }
  }
  document.getElementById('result').textContent = JSON.stringify({
    model: manifest.name, logits: result.logits[0], target_ids: result.targetIds[0], maps,
  });
  document.body.dataset.state = 'done';
}

async function main() {
  const manifest = await (await fetch(new URL('manifest.json', modelUrl))).json();
  mapsInfo(manifest);
  const graph = new URL(manifest.graphs.maps.file, modelUrl);
  const session = await ort.InferenceSession.create(graph.href, { executionProviders: ['wasm'] });
  const model = { manifest, session };
  status.textContent = `model ${manifest.name}: ${manifest.maps.methods.join(', ')}; pick an image`;
  document.getElementById('file').addEventListener('change', async (event) => {
    const file = event.target.files[0];
    if (file) await explain(model, await createImageBitmap(file)).catch(fail);
  });
  if (params.get('targets')) document.getElementById('targets').value = params.get('targets');
  if (params.get('image')) {
    const blob = await (await fetch(new URL(params.get('image'), location.href))).blob();
    await explain(model, await createImageBitmap(blob));
  }
}

main().catch(fail);
