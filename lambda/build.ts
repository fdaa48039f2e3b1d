/**
 * Bundles the suppression Lambda: `npm run build:lambda` (tsx lambda/build.ts).
 *
 * lambda/src/handler.ts -> lambda/dist/index.js (CommonJS, node20, exports `handler`, so the Lambda handler
 * setting is `index.handler`), then lambda/dist/lambda.zip holding index.js, ready for
 * `aws lambda update-function-code --zip-file fileb://lambda/dist/lambda.zip` or SAM (template.yaml).
 *
 * The AWS SDK v3 clients are bundled rather than taken from the nodejs20.x runtime: the function then runs
 * exactly the SDK version the tests ran against, and a runtime SDK update cannot change its behaviour.
 * The zip is written here with node:zlib (deflate) so no `zip` binary is needed; entries carry a fixed
 * timestamp so identical sources give an identical zip.
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { build } from 'esbuild';

export const LAMBDA_DIR = __dirname;
export const DIST_DIR = path.join(LAMBDA_DIR, 'dist');
export const BUNDLE = path.join(DIST_DIR, 'index.js');
export const ZIP = path.join(DIST_DIR, 'lambda.zip');

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(data: Buffer): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A zip archive (deflated entries, DOS time 1980-01-01 00:00, file mode 0644). */
export function zipFiles(files: Array<{ name: string; data: Buffer }>): Buffer {
  const DOS_TIME = 0;
  const DOS_DATE = (0 << 9) | (1 << 5) | 1; // 1980-01-01
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const file of files) {
    const name = Buffer.from(file.name, 'utf8');
    const compressed = zlib.deflateRawSync(file.data, { level: 9 });
    const crc = crc32(file.data);

    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0); // local file header signature
    local.writeUInt16LE(20, 4); // version needed: 2.0 (deflate)
    local.writeUInt16LE(0x0800, 6); // flags: UTF-8 names
    local.writeUInt16LE(8, 8); // method: deflate
    local.writeUInt16LE(DOS_TIME, 10);
    local.writeUInt16LE(DOS_DATE, 12);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(compressed.length, 18);
    local.writeUInt32LE(file.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    local.writeUInt16LE(0, 28); // extra length
    locals.push(local, name, compressed);

    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0); // central directory header signature
    central.writeUInt16LE((3 << 8) | 20, 4); // made by: Unix, 2.0
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(0x0800, 8);
    central.writeUInt16LE(8, 10);
    central.writeUInt16LE(DOS_TIME, 12);
    central.writeUInt16LE(DOS_DATE, 14);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(compressed.length, 20);
    central.writeUInt32LE(file.data.length, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt16LE(0, 30); // extra
    central.writeUInt16LE(0, 32); // comment
    central.writeUInt16LE(0, 34); // disk
    central.writeUInt16LE(0, 36); // internal attributes
    central.writeUInt32LE(((0o100644 << 16) >>> 0) as number, 38); // external: regular file 0644
    central.writeUInt32LE(offset, 42);
    centrals.push(central, name);

    offset += local.length + name.length + compressed.length;
  }
  const centralSize = centrals.reduce((n, b) => n + b.length, 0);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); // end of central directory signature
  end.writeUInt16LE(0, 4);
  end.writeUInt16LE(0, 6);
  end.writeUInt16LE(files.length, 8);
  end.writeUInt16LE(files.length, 10);
  end.writeUInt32LE(centralSize, 12);
  end.writeUInt32LE(offset, 16);
  end.writeUInt16LE(0, 20);
  return Buffer.concat([...locals, ...centrals, end]);
}

export async function buildLambda(): Promise<{
  bundle: string;
  zip: string;
  bundleBytes: number;
  zipBytes: number;
}> {
  fs.rmSync(DIST_DIR, { recursive: true, force: true });
  fs.mkdirSync(DIST_DIR, { recursive: true });
  await build({
    entryPoints: [path.join(LAMBDA_DIR, 'src', 'handler.ts')],
    outfile: BUNDLE,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    minify: true,
    keepNames: true,
    sourcemap: false,
    legalComments: 'none',
    logLevel: 'warning',
  });
  const code = fs.readFileSync(BUNDLE);
  const zip = zipFiles([{ name: 'index.js', data: code }]);
  fs.writeFileSync(ZIP, zip);
  return { bundle: BUNDLE, zip: ZIP, bundleBytes: code.length, zipBytes: zip.length };
}

if (require.main === module) {
  buildLambda().then(
    (r) => {
      const rel = (p: string) => path.relative(process.cwd(), p);
      console.log(`${rel(r.bundle)} ${(r.bundleBytes / 1024).toFixed(0)} KiB`);
      console.log(`${rel(r.zip)} ${(r.zipBytes / 1024).toFixed(0)} KiB`);
    },
    (err: unknown) => {
      console.error(err instanceof Error ? err.message : err);
      process.exit(1);
    },
  );
}
