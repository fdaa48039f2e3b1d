/**
 * Configuration of how mail meets SES: SES_TRANSPORT (and its default), the API's region and endpoint, the
 * default configuration set, SES_RATE_LIMIT=auto and its variables, the API's message-size limit; each bad
 * combination is one line naming the variable.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { ConfigError, loadConfig } from '../src/config';
import { SES_API_MAX_RAW_MESSAGE_SIZE } from '../src/config/sections';
import { SES_API_MAX_RAW_BYTES } from '../src/egress/transport/ses-api-transport';
import { MAIN } from './helpers/relay-process';

const SMTP = {
  AWS_SMTP_HOST: 'email-smtp.eu-west-1.amazonaws.com',
  AWS_SMTP_USERNAME: 'AKIA',
  AWS_SMTP_PASSWORD: 'pw',
};

test('SES_TRANSPORT defaults: smtp with AWS_SMTP_HOST, outbox without (as before)', () => {
  assert.equal(loadConfig({}).egress.transport, 'outbox');
  const smtp = loadConfig(SMTP);
  assert.equal(smtp.egress.transport, 'smtp');
  assert.equal(smtp.egress.sesHost, SMTP.AWS_SMTP_HOST);
  assert.equal(smtp.limiter.auto, undefined);
  assert.equal(smtp.limiter.rate, 14);
  assert.equal(smtp.ingress.maxMessageSize, 40 * 1024 * 1024, 'SMTP keeps 40 MiB');
});

test('SES_TRANSPORT=api: region, endpoint, configuration set, and the API size limit as default', () => {
  const c = loadConfig({
    SES_TRANSPORT: 'api',
    AWS_REGION: 'eu-west-1',
    AWS_ENDPOINT_URL_SESV2: 'http://127.0.0.1:4566',
    SES_CONFIGURATION_SET: 'relay-events_1',
  });
  assert.equal(c.egress.transport, 'api');
  assert.equal(c.egress.region, 'eu-west-1');
  assert.equal(c.egress.apiEndpoint, 'http://127.0.0.1:4566');
  assert.equal(c.egress.configurationSet, 'relay-events_1');
  assert.equal(c.egress.sesHost, undefined);
  assert.equal(c.ingress.maxMessageSize, SES_API_MAX_RAW_MESSAGE_SIZE);
  assert.equal(SES_API_MAX_RAW_MESSAGE_SIZE, SES_API_MAX_RAW_BYTES, 'config and transport agree');
  const smaller = loadConfig({
    SES_TRANSPORT: 'api',
    AWS_REGION: 'eu-west-1',
    SMTP_MAX_MESSAGE_SIZE: '1000',
  });
  assert.equal(smaller.ingress.maxMessageSize, 1000);
});

test('an explicit SES_TRANSPORT=outbox wins over AWS_SMTP_HOST', () => {
  const c = loadConfig({ ...SMTP, SES_TRANSPORT: 'outbox' });
  assert.equal(c.egress.transport, 'outbox');
  assert.equal(c.egress.sesHost, undefined);
});

test('SES_RATE_LIMIT=auto: fraction, fallback, refresh; rate and burst start from the fallback', () => {
  const c = loadConfig({
    SES_TRANSPORT: 'api',
    AWS_REGION: 'us-east-1',
    SES_RATE_LIMIT: 'auto',
    SES_RATE_FRACTION: '0.5',
    SES_RATE_FALLBACK: '2',
    SES_QUOTA_REFRESH: '1m',
  });
  assert.deepEqual(c.limiter.auto, { fraction: 0.5, fallbackRate: 2, refreshMs: 60_000 });
  assert.equal(c.limiter.rate, 2);
  assert.equal(c.limiter.burst, 2);
  assert.equal(c.limiter.burstExplicit, false);
  const d = loadConfig({ ...SMTP, AWS_REGION: 'us-east-1', SES_RATE_LIMIT: 'AUTO', SES_BURST: '20' });
  assert.deepEqual(d.limiter.auto, { fraction: 1, fallbackRate: 1, refreshMs: 300_000 });
  assert.equal(d.limiter.burst, 20);
  assert.equal(d.limiter.burstExplicit, true);
});

const bad: Array<[Record<string, string>, string, RegExp?]> = [
  [{ SES_TRANSPORT: 'ses' }, 'SES_TRANSPORT'],
  [{ SES_TRANSPORT: 'api' }, 'AWS_REGION', /SES_TRANSPORT=api/],
  [{ SES_TRANSPORT: 'smtp' }, 'AWS_SMTP_HOST', /SES_TRANSPORT=smtp/],
  [{ SES_TRANSPORT: 'smtp', AWS_SMTP_HOST: 'h' }, 'AWS_SMTP_USERNAME'],
  [{ SES_TRANSPORT: 'smtp', AWS_SMTP_HOST: 'h', AWS_SMTP_USERNAME: 'u' }, 'AWS_SMTP_PASSWORD'],
  [
    { SES_TRANSPORT: 'api', AWS_REGION: 'r', AWS_ENDPOINT_URL_SESV2: 'localhost:4566' },
    'AWS_ENDPOINT_URL_SESV2',
  ],
  [{ SES_TRANSPORT: 'api', AWS_REGION: 'r', AWS_ENDPOINT_URL_SESV2: 'ftp://x' }, 'AWS_ENDPOINT_URL_SESV2'],
  [
    { SES_TRANSPORT: 'api', AWS_REGION: 'r', SMTP_MAX_MESSAGE_SIZE: '41943040' },
    'SMTP_MAX_MESSAGE_SIZE',
    /base64/,
  ],
  [{ SES_CONFIGURATION_SET: 'bad name' }, 'SES_CONFIGURATION_SET'],
  [{ SES_CONFIGURATION_SET: 'set\r\nBcc: victim@example.com' }, 'SES_CONFIGURATION_SET'],
  [{ SES_CONFIGURATION_SET: 'x'.repeat(65) }, 'SES_CONFIGURATION_SET'],
  [{ SES_RATE_LIMIT: 'auto' }, 'SES_RATE_LIMIT', /SES_TRANSPORT/],
  [{ ...SMTP, SES_RATE_LIMIT: 'auto' }, 'AWS_REGION', /auto/],
  [{ ...SMTP, AWS_REGION: 'r', SES_RATE_LIMIT: 'auto', SES_QUOTA_REFRESH: '1s' }, 'SES_QUOTA_REFRESH'],
  [{ SES_RATE_FRACTION: '1.5' }, 'SES_RATE_FRACTION'],
  [{ SES_RATE_FRACTION: '0' }, 'SES_RATE_FRACTION'],
  [{ SES_RATE_FALLBACK: '-1' }, 'SES_RATE_FALLBACK'],
  [{ SES_RATE_LIMIT: 'automatic' }, 'SES_RATE_LIMIT'],
];

for (const [env, variable, re] of bad) {
  test(`bad setting ${JSON.stringify(env)} names ${variable}`, () => {
    assert.throws(
      () => loadConfig(env),
      (err: unknown) =>
        err instanceof ConfigError && err.variable === variable && (!re || re.test(err.message)),
    );
  });
}

test('the process refuses SES_TRANSPORT=api without AWS_REGION in one line', () => {
  const r = spawnSync(process.execPath, [MAIN], {
    env: { PATH: process.env.PATH, SES_TRANSPORT: 'api' },
    encoding: 'utf8',
    timeout: 15_000,
  });
  assert.equal(r.status, 2);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(
    lines[0],
    /^ses-email-service: configuration error: AWS_REGION: is required when SES_TRANSPORT=api/,
  );
});
