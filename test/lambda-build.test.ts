import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { GetItemCommand } from '@aws-sdk/client-dynamodb';
import YAML from 'yaml';
import { startDynalite, type Dynalite } from './helpers/dynalite';

const ROOT = path.resolve(__dirname, '..');
const BUNDLE = path.join(ROOT, 'lambda', 'dist', 'index.js');
const ZIP = path.join(ROOT, 'lambda', 'dist', 'lambda.zip');

/** Read the entries of a zip (local headers; deflate or stored) with node:zlib only. */
function readZip(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let p = 0;
  while (buf.readUInt32LE(p) === 0x04034b50) {
    const method = buf.readUInt16LE(p + 8);
    const size = buf.readUInt32LE(p + 18);
    const nameLen = buf.readUInt16LE(p + 26);
    const extraLen = buf.readUInt16LE(p + 28);
    const name = buf.toString('utf8', p + 30, p + 30 + nameLen);
    const start = p + 30 + nameLen + extraLen;
    const raw = buf.subarray(start, start + size);
    out.set(name, method === 8 ? zlib.inflateRawSync(raw) : Buffer.from(raw));
    p = start + size;
  }
  assert.equal(buf.readUInt32LE(p), 0x02014b50, 'central directory follows the entries');
  return out;
}

describe('Lambda bundle (npm run build:lambda)', () => {
  let db: Dynalite;

  before(async () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', path.join('lambda', 'build.ts')], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(r.status, 0, `build failed: ${r.stderr}`);
    db = await startDynalite();
  });
  after(async () => {
    await db?.close();
  });

  test('lambda/dist/index.js is CommonJS exporting handler', () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require(BUNDLE) as { handler?: unknown };
    assert.equal(typeof mod.handler, 'function');
  });

  test('lambda.zip holds exactly index.js, identical to the bundle', () => {
    const entries = readZip(fs.readFileSync(ZIP));
    assert.deepEqual([...entries.keys()], ['index.js']);
    assert.ok(entries.get('index.js')!.equals(fs.readFileSync(BUNDLE)));
    const unzip = spawnSync('unzip', ['-t', ZIP], { encoding: 'utf8' });
    if (!unzip.error) assert.equal(unzip.status, 0, unzip.stdout + unzip.stderr);
  });

  test('the bundled handler writes a permanent bounce into DynamoDB', async () => {
    const table = 'bundle-test';
    await db.createTable(table);
    const message = fs.readFileSync(
      path.join(ROOT, 'test', 'fixtures', 'ses-notifications', 'event-bounce.json'),
      'utf8',
    );
    // Run the bundle in its own process, as Lambda would, with the Lambda environment.
    const script = `
      const { handler } = require(${JSON.stringify(BUNDLE)});
      handler({ Records: [{ Sns: { MessageId: 'm-1', Message: process.env.MESSAGE } }] })
        .then((s) => { process.stdout.write(JSON.stringify(s)); })
        .catch((e) => { console.error(e); process.exit(1); });`;
    // Asynchronously: dynalite runs in this process and must keep answering.
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], {
      env: { ...process.env, ...db.env, DYNAMODB_TABLE: table, LOG_LEVEL: 'silent', MESSAGE: message },
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(JSON.parse(stdout).suppressed, 1);
    const item = await db
      .client()
      .send(new GetItemCommand({ TableName: table, Key: { email: { S: 'recipient@example.com' } } }));
    assert.equal(item.Item?.reason.S, 'bounce');
  });

  test('template.yaml: tables, SNS subscription, function and least-privilege policies', () => {
    // CloudFormation short forms (!Ref, !If [...], ...) as plain objects.
    const customTags = ['Ref', 'GetAtt', 'Sub', 'If', 'Equals', 'Not', 'And'].flatMap((name) => [
      { tag: `!${name}`, resolve: (v: string) => ({ [name]: v }) },
      {
        tag: `!${name}`,
        collection: 'seq' as const,
        resolve: (seq: YAML.YAMLSeq) => new YAML.Scalar({ [name]: seq.toJSON() }),
      },
    ]);
    const doc = YAML.parse(fs.readFileSync(path.join(ROOT, 'lambda', 'template.yaml'), 'utf8'), {
      customTags,
    }) as { Resources: Record<string, { Type: string; Properties: Record<string, unknown> }> };
    const r = doc.Resources;
    assert.equal(r.SuppressionTable.Type, 'AWS::DynamoDB::Table');
    assert.equal(r.SuppressionTable.Properties.BillingMode, 'PAY_PER_REQUEST');
    assert.deepEqual(r.SuppressionTable.Properties.KeySchema, [{ AttributeName: 'email', KeyType: 'HASH' }]);
    assert.deepEqual(r.ApiKeysTable.Properties.KeySchema, [
      { AttributeName: 'api_key_hash', KeyType: 'HASH' },
    ]);
    const fn = r.SuppressionFunction.Properties as Record<string, unknown>;
    assert.equal(fn.Handler, 'index.handler');
    assert.equal(fn.Runtime, 'nodejs20.x');
    assert.equal(fn.CodeUri, 'dist/lambda.zip');
    const text = JSON.stringify(doc);
    const fnPolicies = JSON.stringify(fn.Policies);
    for (const a of ['dynamodb:UpdateItem', 'dynamodb:PutItem', 'dynamodb:BatchWriteItem', 'ses:SendEmail']) {
      assert.ok(fnPolicies.includes(a), a);
    }
    assert.ok(!/dynamodb:(GetItem|Scan|DeleteItem|\*)/.test(fnPolicies), 'the Lambda only writes');
    const relayDoc = r.RelayReadPolicy.Properties.PolicyDocument as {
      Statement: Array<{ Action: string[] }>;
    };
    assert.deepEqual(
      relayDoc.Statement.flatMap((s) => s.Action),
      ['dynamodb:GetItem', 'dynamodb:BatchGetItem'],
      'the relay only reads',
    );
    assert.ok(text.includes('SesNotificationTopicArn'));
  });
});
