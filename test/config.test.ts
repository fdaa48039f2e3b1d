/**
 * Configuration: defaults, the original service's names, and bad settings — each stops the process
 * before it listens with ONE line naming the variable and a non-zero exit.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { loadConfig, ConfigError } from '../src/config';
import { DEFAULT_TRUSTED_NETWORKS } from '../src/config/specs';
import { MAIN, TEST_CA } from './helpers/relay-process';

const fixtures = path.join(__dirname, 'fixtures', 'tls');
// htpasswd -nbB alice secret
const ALICE = 'alice:$2y$05$ASQ3FEAjaxvZf//LBvhAH.wkhvEBsR/yuVay66OiO4/bSqpGqdlJ6';

test('embedded defaults: port 1025, local outbox, trusted loopback and private ranges', () => {
  const c = loadConfig({});
  assert.equal(c.ingress.port, 1025);
  assert.equal(c.ingress.host, '0.0.0.0');
  assert.equal(c.egress.sesHost, undefined);
  assert.equal(c.egress.sesPort, 587);
  assert.equal(c.ingress.maxMessageSize, 40 * 1024 * 1024);
  assert.deepEqual(c.ingress.trustedNetworks, DEFAULT_TRUSTED_NETWORKS);
  assert.equal(c.limiter.rate, 14);
  assert.equal(c.limiter.burst, 14);
  assert.equal(c.observability.metricsPort, 9464);
});

test("the original service's variable names work", () => {
  const c = loadConfig({
    SMTP_HOST: '127.0.0.1',
    SMTP_PORT: '2525',
    AWS_SMTP_HOST: 'email-smtp.eu-west-1.amazonaws.com',
    AWS_SMTP_PORT: '465',
    AWS_SMTP_USERNAME: 'AKIA',
    AWS_SMTP_PASSWORD: 'pw',
    SES_RATE_LIMIT: '0.5',
    USE_BLACKLIST: 'true',
    DYNAMODB_TABLE: 'blocklist',
    USE_APIKEY: 'true',
    DYNAMODB_API_KEYS_TABLE: 'keys',
    ENABLE_SSL: 'true',
    SSL_CERT_PATH: path.join(fixtures, 'server.crt'),
    SSL_KEY_PATH: path.join(fixtures, 'server.key'),
    SERVER_FQDN: 'relay.example.com',
  });
  assert.equal(c.ingress.port, 2525);
  assert.equal(c.egress.sesSecure, true);
  assert.equal(c.limiter.rate, 0.5);
  assert.equal(c.limiter.burst, 1);
  assert.equal(c.policy.useBlocklist, true);
  assert.equal(c.policy.useApiKey, true);
  assert.equal(c.ingress.implicitTls, true);
  assert.equal(c.ingress.serverName, 'relay.example.com');
  assert.deepEqual(c.ingress.trustedNetworks, [], 'with API keys nobody is trusted unless set explicitly');
});

test('users and explicit trusted networks', () => {
  const c = loadConfig({ SMTP_USERS: ALICE, SMTP_TRUSTED_NETWORKS: '10.1.0.0/16, 192.0.2.7' });
  assert.equal(c.ingress.users[0].username, 'alice');
  assert.deepEqual(c.ingress.trustedNetworks, ['10.1.0.0/16', '192.0.2.7/32']);
  assert.deepEqual(loadConfig({ SMTP_USERS: ALICE }).ingress.trustedNetworks, []);
});

const bad: Array<[Record<string, string>, string, RegExp?]> = [
  [{ SMTP_PORT: 'abc' }, 'SMTP_PORT'],
  [{ SMTP_PORT: '70000' }, 'SMTP_PORT'],
  [{ SES_RATE_LIMIT: '0' }, 'SES_RATE_LIMIT'],
  [{ SES_RATE_LIMIT: 'fast' }, 'SES_RATE_LIMIT'],
  [{ SMTP_USERS: 'bob:plaintext-password' }, 'SMTP_USERS', /bcrypt/],
  [{ SMTP_TRUSTED_NETWORKS: '10.0.0.0/33' }, 'SMTP_TRUSTED_NETWORKS'],
  [{ SMTP_MAX_MESSAGE_SIZE: '-5' }, 'SMTP_MAX_MESSAGE_SIZE'],
  [{ RETRY_SCHEDULE: '5s,soon' }, 'RETRY_SCHEDULE'],
  [{ ENABLE_SSL: 'true' }, 'ENABLE_SSL'],
  [{ ENABLE_SSL: 'maybe' }, 'ENABLE_SSL'],
  [{ SSL_CERT_PATH: '/nonexistent.pem', SSL_KEY_PATH: '/nonexistent.key' }, 'SSL_CERT_PATH'],
  [{ SSL_CERT_PATH: path.join(fixtures, 'server.crt') }, 'SSL_KEY_PATH'],
  [{ AWS_SMTP_HOST: 'email-smtp.us-east-1.amazonaws.com' }, 'AWS_SMTP_USERNAME'],
  [{ USE_BLOCKLIST: 'true' }, 'DYNAMODB_TABLE'],
  [{ USE_APIKEY: 'true' }, 'DYNAMODB_API_KEYS_TABLE'],
  [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
  [{ BLOCKLIST_ACTION: 'bounce' }, 'BLOCKLIST_ACTION'],
  [{ REDIS_URL: 'localhost:6379' }, 'REDIS_URL'],
  [{ MAX_QUEUE_AGE: 'forever' }, 'MAX_QUEUE_AGE'],
  [{ SES_THROTTLE_FACTOR: '1' }, 'SES_THROTTLE_FACTOR'],
  [{ SES_THROTTLE_PAUSE: 'briefly' }, 'SES_THROTTLE_PAUSE'],
  [{ SES_THROTTLE_PAUSE: '5m' }, 'SES_THROTTLE_PAUSE', /at most 1m/],
  [{ SES_QUOTA_PROBE_INTERVAL: '100ms' }, 'SES_QUOTA_PROBE_INTERVAL', /at least 1s/],
  [{ SES_QUOTA_PROBE_INTERVAL: 'hourly' }, 'SES_QUOTA_PROBE_INTERVAL'],
];

test('the throttle reaction and the delivery pause: defaults and settings', () => {
  const d = loadConfig({}).limiter;
  assert.deepEqual(
    [d.throttleFactor, d.throttleRecoveryMs, d.throttlePauseMs, d.quotaProbeIntervalMs],
    [0.8, 60_000, 1000, 60_000],
  );
  const c = loadConfig({
    SES_THROTTLE_FACTOR: '0.7',
    SES_THROTTLE_RECOVERY: '2m',
    SES_THROTTLE_PAUSE: '500ms',
    SES_QUOTA_PROBE_INTERVAL: '5m',
  }).limiter;
  assert.deepEqual(
    [c.throttleFactor, c.throttleRecoveryMs, c.throttlePauseMs, c.quotaProbeIntervalMs],
    [0.7, 120_000, 500, 300_000],
  );
});

for (const [env, variable, re] of bad) {
  test(`bad setting ${JSON.stringify(env)} names ${variable}`, () => {
    assert.throws(
      () => loadConfig(env),
      (err: unknown) =>
        err instanceof ConfigError && err.variable === variable && (!re || re.test(err.message)),
    );
  });
}

test('the process prints one line naming the variable and exits non-zero before listening', () => {
  const secret = 'sup3r-s3cret-value';
  const r = spawnSync(process.execPath, [MAIN], {
    env: {
      PATH: process.env.PATH,
      SMTP_PORT: 'not-a-port',
      AWS_SMTP_PASSWORD: secret,
      NODE_EXTRA_CA_CERTS: TEST_CA,
    },
    encoding: 'utf8',
    timeout: 15_000,
  });
  assert.equal(r.status, 2);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^ses-email-service: configuration error: SMTP_PORT: /);
  assert.equal(r.stdout, '');
  assert.ok(!r.stderr.includes(secret));
});
