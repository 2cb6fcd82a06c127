#!/usr/bin/env node
// Node.js client of the camserve gRPC explanation service: sends one image, writes its maps as JSON.
//
//   node explain.js --server 127.0.0.1:50051 --image digit.png --out map.json \
//       [--model digits] [--method gradcam --method gradcam++] [--target -1 --target 3] [--timeout 60]
//   node explain.js ... --target-spec '{"kind": "TARGET_KIND_PROBABILITY", "class_id": 3}'
//
// --target-spec (repeatable, instead of --target) is a camserve.v1.Target as JSON: kind (a TargetKind
// name), class_id, box {x1, y1, x2, y2}, mask {rle: {height, width, counts}}, vector, image.
// The JSON holds the predictions, the resolved targets, their kinds and scores and, per (target, method), the map's shape,
// dtype and values (decoded from the raw little-endian bytes the service sends).
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const PROTO_FILE = 'camserve/v1/camserve.proto';

function usage(message) {
  process.stderr.write(`explain.js: error: ${message}\n`);
  process.stderr.write(
    'usage: node explain.js --server HOST:PORT --image FILE --out FILE.json ' +
      '[--model NAME] [--method NAME]... [--target CLASS]... [--target-spec JSON]... [--timeout SECONDS]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const args = { methods: [], targets: [], specs: [], timeout: 60 };
  const repeated = { '--method': 'methods', '--target': 'targets', '--target-spec': 'specs' };
  const single = { '--server': 'server', '--image': 'image', '--out': 'out', '--model': 'model', '--timeout': 'timeout' };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) usage(`${flag} needs a value`);
    if (flag in repeated) args[repeated[flag]].push(value);
    else if (flag in single) args[single[flag]] = value;
    else usage(`unknown argument ${flag}`);
  }
  for (const required of ['server', 'image', 'out']) {
    if (!args[required]) usage(`--${required} is required`);
  }
  args.targets = args.targets.map((t) => {
    if (!/^-?\d+$/.test(t)) usage(`--target ${t}: expected a class id or -k`);
    return Number(t);
  });
  args.specs = args.specs.map((spec) => {
    try {
      return JSON.parse(spec);
    } catch (error) {
      return usage(`--target-spec ${spec}: not JSON (${error.message})`);
    }
  });
  if (args.specs.length && args.targets.length) usage('give --target or --target-spec, not both');
  args.timeout = Number(args.timeout);
  if (!(args.timeout > 0)) usage('--timeout must be a positive number of seconds');
  if (args.methods.length === 0) args.methods = ['gradcam'];
  return args;
}

function loadService() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).camserve.v1.ExplainService;
}

function float16(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

// A camserve.v1.Tensor -> { shape, dtype, data: [numbers] }.
function decodeTensor(tensor) {
  const count = tensor.shape.reduce((a, b) => a * b, 1);
  const bytes = tensor.data;
  const readers = {
    DATA_TYPE_UNSPECIFIED: [4, (o) => bytes.readFloatLE(o)],
    DATA_TYPE_FLOAT32: [4, (o) => bytes.readFloatLE(o)],
    DATA_TYPE_FLOAT16: [2, (o) => float16(bytes.readUInt16LE(o))],
    DATA_TYPE_UINT8: [1, (o) => bytes.readUInt8(o)],
  };
  if (!(tensor.dtype in readers)) throw new Error(`unknown dtype ${tensor.dtype}`);
  const [size, read] = readers[tensor.dtype];
  if (bytes.length !== count * size) {
    throw new Error(`tensor of shape [${tensor.shape}] has ${bytes.length} bytes, expected ${count * size}`);
  }
  const data = new Array(count);
  for (let i = 0; i < count; i += 1) data[i] = read(i * size);
  const dtype = tensor.dtype === 'DATA_TYPE_UNSPECIFIED' ? 'float32' : tensor.dtype.slice(10).toLowerCase();
  return { shape: tensor.shape, dtype, data };
}

function call(client, method, request, timeoutSeconds) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutSeconds * 1000);
    client[method](request, { deadline }, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const ExplainService = loadService();
  const client = new ExplainService(args.server, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
  });
  try {
    let model = args.model;
    if (!model) {
      const listed = await call(client, 'ListModels', {}, args.timeout);
      if (listed.models.length !== 1) {
        usage(`the server serves ${listed.models.map((m) => m.name).join(', ')}: choose one with --model`);
      }
      model = listed.models[0].name;
    }
    const reply = await call(
      client,
      'Explain',
      {
        id: path.basename(args.image),
        model,
        methods: args.methods,
        images: [{ encoded: fs.readFileSync(args.image), targets: args.targets, target_specs: args.specs }],
      },
      args.timeout,
    );
    const image = reply.images[0];
    const result = {
      id: reply.id,
      model: reply.model,
      predictions: image.predictions,
      target_ids: image.target_ids,
      target_kinds: image.target_kinds,
      target_scores: image.target_scores,
      logits: decodeTensor(image.logits).data,
      maps: image.maps.map((m) => ({
        method: m.method,
        target_index: m.target_index,
        class_id: m.class_id,
        ...decodeTensor(m.data),
      })),
    };
    fs.writeFileSync(args.out, JSON.stringify(result));
    const best = image.predictions[0];
    process.stdout.write(
      `${args.image}: predicted ${best.name} (p = ${best.probability.toFixed(3)}); ` +
        `wrote ${result.maps.length} map(s) to ${args.out}\n`,
    );
  } finally {
    client.close();
  }
}

main().catch((error) => {
  const code = error.code !== undefined ? `${grpc.status[error.code]}: ` : '';
  process.stderr.write(`explain.js: error: ${code}${error.details || error.message}\n`);
  process.exit(2);
});
