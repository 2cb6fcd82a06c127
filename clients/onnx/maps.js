#!/usr/bin/env node
// camserve's maps graph run by onnxruntime-node, no server: one PNG in, its maps out as JSON.
//
//   node maps.js --model MODEL_DIR --image digit.png [--target -1 --target 3] [--out maps.json]
//
// MODEL_DIR is a camserve model directory with a maps graph (`camserve export ... --maps`). The PNG
// must have the model's input size. The JSON holds the logits, the resolved targets and, per (target,
// method), the map's shape, dtype and values.
import fs from 'node:fs';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { PNG } from 'pngjs';
import { mapsInfo, preprocess, runMaps, topClasses } from './camserve-maps.mjs';

function usage(message) {
  process.stderr.write(`maps.js: error: ${message}\n`);
  process.stderr.write('usage: node maps.js --model MODEL_DIR --image FILE.png [--target CLASS]... [--out FILE.json]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const args = { targets: [] };
  const single = { '--model': 'model', '--image': 'image', '--out': 'out' };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) usage(`${flag} needs a value`);
    if (flag === '--target') {
      if (!/^-?\d+$/.test(value)) usage(`--target ${value}: expected a class id or -k`);
      args.targets.push(Number(value));
    } else if (flag in single) args[single[flag]] = value;
    else usage(`unknown argument ${flag}`);
  }
  for (const required of ['model', 'image']) if (!args[required]) usage(`--${required} is required`);
  if (args.targets.length === 0) args.targets = [-1];
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let manifest, png;
  try {
    manifest = JSON.parse(fs.readFileSync(path.join(args.model, 'manifest.json'), 'utf8'));
    mapsInfo(manifest);
    png = PNG.sync.read(fs.readFileSync(args.image));
  } catch (err) {
    usage(err.message);
  }
  const classes = manifest.class_names.length;
  const bad = args.targets.find((t) => t >= classes || t < -classes);
  if (bad !== undefined) usage(`--target ${bad}: model ${manifest.name} has ${classes} classes`);
  let image;
  try {
    image = preprocess(png.data, png.width, png.height, manifest);
  } catch (err) {
    usage(`--image ${args.image}: ${err.message}`);
  }
  const session = await ort.InferenceSession.create(path.join(args.model, manifest.graphs.maps.file));
  const result = await runMaps(ort, session, manifest, image, [args.targets]);
  const best = topClasses(result.logits[0], manifest.class_names)[0];
  process.stdout.write(`predicted ${best.name} (class ${best.classId}, p=${best.probability.toFixed(3)}); `);
  process.stdout.write(`targets ${result.targetIds[0].join(', ')}\n`);
  const maps = [];
  for (const [method, { dims, data }] of Object.entries(result.maps)) {
    const [, t, h, w] = dims;
    for (let k = 0; k < t; k++) {
      const values = Array.from(data.slice(k * h * w, (k + 1) * h * w));
      maps.push({ method, target_index: k, shape: [h, w], dtype: manifest.maps.dtype, data: values });
    }
  }
  const out = { model: manifest.name, logits: result.logits[0], target_ids: result.targetIds[0], maps };
  if (args.out) fs.writeFileSync(args.out, JSON.stringify(out));
}

main().catch((err) => {
  process.stderr.write(`maps.js: error: ${err.message}\n`);
  process.exit(1);
});
