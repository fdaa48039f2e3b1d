/**
 * The autoresponder's configuration: the JSON format validated strictly (one line naming the entry for each
 * kind of mistake), the AUTORESPONDER_* / DKIM_* variables (one ConfigError line naming the variable, secrets
 * never echoed), and a relay whose configuration file is bad refusing to start with that one line.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { parseResponderConfig } from '../src/autoresponder/config-schema';
import { ConfigError, loadConfig } from '../src/config';
import { MAIN, freePort, tempDir } from './helpers/relay-process';

const ok = { email_addr: 'get@example.org', body: 'hi', attachments: null };

test('a valid configuration: entries by address (case-insensitive), in file order, send_method defaulting to SMTP', () => {
  const c = parseResponderConfig(
    JSON.stringify([
      { ...ok, email_addr: 'Get@Example.org', send_method: 'SES' },
      { ...ok, body: [['html', '<b>x</b>']], attachments: [['bucket-1', 'dir/app.apk', 'app.apk']] },
      { ...ok, email_addr: 'other@example.net' },
    ]),
  );
  assert.deepEqual(
    c.byAddress.get('get@example.org')?.map((e) => [e.index, e.address, e.sendMethod]),
    [
      [1, 'Get@Example.org', 'SES'],
      [2, 'get@example.org', 'SMTP'],
    ],
  );
  assert.deepEqual(c.byAddress.get('get@example.org')?.[1].attachments, [
    { bucket: 'bucket-1', key: 'dir/app.apk', filename: 'app.apk' },
  ]);
  assert.deepEqual(c.domains.sort(), ['example.net', 'example.org']);
});

test('every kind of mistake is one line naming the entry', () => {
  const cases: Array<[unknown, string]> = [
    ['not json', 'not JSON: '],
    [{}, 'must be a JSON list of entries'],
    [[], 'lists no entry'],
    [[1], 'entry 1: must be an object'],
    [[{ body: 'x', attachments: null }], 'entry 1: email_addr: is missing'],
    [[ok, { email_addr: 'b@example.org', attachments: null }], 'entry 2 (b@example.org): body: is missing'],
    [[{ email_addr: 'get@example.org', body: 'x' }], 'entry 1 (get@example.org): attachments: is missing'],
    [[{ ...ok, extra: 1 }], 'entry 1 (get@example.org): unknown field "extra"'],
    [[{ ...ok, email_addr: 7 }], 'entry 1: email_addr: must be a string'],
    [[{ ...ok, email_addr: 'get example.org' }], 'entry 1 (get example.org): email_addr: is not an address'],
    [[{ ...ok, body: 5 }], 'entry 1 (get@example.org): body: must be a string or a list of'],
    [[{ ...ok, body: [] }], 'entry 1 (get@example.org): body: must hold at least one part'],
    [
      [
        {
          ...ok,
          body: [
            ['plain', 'a'],
            ['text', 'b'],
          ],
        },
      ],
      'entry 1 (get@example.org): body[1][0]: must be "plain" or "html"',
    ],
    [[{ ...ok, body: [['plain', 2]] }], 'entry 1 (get@example.org): body[0][1]: '],
    [[{ ...ok, attachments: {} }], 'entry 1 (get@example.org): attachments: must be null or a list of'],
    [
      [{ ...ok, attachments: [['b', 'k']] }],
      'entry 1 (get@example.org): attachments[0]: must be ["bucket", "key", "filename"]',
    ],
    [
      [{ ...ok, attachments: [['Bad_Bucket', 'k', 'f']] }],
      'entry 1 (get@example.org): attachments[0][0]: is not an S3 bucket name',
    ],
    [
      [{ ...ok, attachments: [['bucket', '', 'f']] }],
      'entry 1 (get@example.org): attachments[0][1]: must not be empty',
    ],
    [
      [{ ...ok, attachments: [['bucket', 'k', '../etc/passwd']] }],
      'entry 1 (get@example.org): attachments[0][2]: is not a file name',
    ],
    [
      [{ ...ok, attachments: [['bucket', 'k', 'a\r\nX-Evil: 1']] }],
      'entry 1 (get@example.org): attachments[0][2]: is not a file name',
    ],
    [[{ ...ok, send_method: 'ses' }], 'entry 1 (get@example.org): send_method: must be "SES" or "SMTP"'],
  ];
  for (const [input, expected] of cases) {
    const text = typeof input === 'string' ? input : JSON.stringify(input);
    assert.throws(
      () => parseResponderConfig(text),
      (err: Error) => {
        assert.ok(err.message.startsWith(expected), `${text}\n  got: ${err.message}\n  want: ${expected}`);
        assert.ok(!err.message.includes('\n'), 'one line');
        return true;
      },
    );
  }
});

const base = {
  AUTORESPONDER_CONFIG: '/etc/responder.json',
  AUTORESPONDER_FROM: 'Responder <noreply@example.org>',
};

function configError(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

test('variables: defaults, S3 locations, return path, domains lists, DKIM from a PEM file', () => {
  assert.equal(loadConfig({}).autoresponder, undefined, 'off without AUTORESPONDER_CONFIG');
  const c = loadConfig({ ...base, SPOOL_DIR: '/var/spool/ses-relay' }).autoresponder!;
  assert.deepEqual(c.source, { kind: 'file', path: '/etc/responder.json' });
  assert.equal(c.port, 2525);
  assert.equal(c.host, '0.0.0.0');
  assert.equal(c.refreshMs, 60_000);
  assert.equal(c.fromAddress, 'noreply@example.org');
  assert.equal(c.returnPath, 'noreply@example.org');
  assert.equal(c.dailyLimit, 3);
  assert.equal(c.quotaWindowMs, 24 * 3600_000);
  assert.equal(c.quotaTable, undefined);
  assert.equal(c.requireDkim, false);
  assert.equal(c.dataDir, '/var/spool/ses-relay/autoresponder');
  const key = path.join(tempDir('dkim-'), 'dkim.pem');
  fs.writeFileSync(key, '-----BEGIN PRIVATE KEY-----\nMII...\n-----END PRIVATE KEY-----\n');
  const d = loadConfig({
    ...base,
    AUTORESPONDER_CONFIG: 's3://conf-bucket/responder/conf.json',
    AUTORESPONDER_RETURN_PATH: 'bounces@Example.org',
    AUTORESPONDER_EXEMPT_DOMAINS: 'Example.com, @bücher.de',
    AUTORESPONDER_BLOCKED_DOMAINS: 'spam.example',
    AUTORESPONDER_QUOTA_TABLE: 'quota',
    AUTORESPONDER_HASH_KEY: '0123456789abcdef0123',
    AUTORESPONDER_QUOTA_WINDOW: '12h',
    DKIM_DOMAIN: 'example.org',
    DKIM_SELECTOR: 'responder',
    DKIM_PRIVATE_KEY_PATH: key,
  }).autoresponder!;
  assert.deepEqual(d.source, { kind: 's3', bucket: 'conf-bucket', key: 'responder/conf.json' });
  assert.equal(d.returnPath, 'bounces@example.org');
  assert.deepEqual(d.exemptDomains, ['example.com', 'xn--bcher-kva.de']);
  assert.deepEqual(d.blockedDomains, ['spam.example']);
  assert.equal(d.quotaWindowMs, 12 * 3600_000);
  assert.equal(d.dkim?.selector, 'responder');
  assert.match(d.dkim!.privateKey, /BEGIN PRIVATE KEY/);
});

test('bad variables: one ConfigError naming the variable; secrets are not echoed', () => {
  const cases: Array<[Record<string, string>, string, RegExp]> = [
    [{ AUTORESPONDER_CONFIG: '/x.json' }, 'AUTORESPONDER_FROM', /required when AUTORESPONDER_CONFIG is set/],
    [{ ...base, AUTORESPONDER_FROM: 'not an address' }, 'AUTORESPONDER_FROM', /not an address/],
    [{ ...base, AUTORESPONDER_RETURN_PATH: 'a b@c' }, 'AUTORESPONDER_RETURN_PATH', /not an address/],
    [{ ...base, AUTORESPONDER_CONFIG: 's3://bucket-only' }, 'AUTORESPONDER_CONFIG', /s3:\/\/bucket\/key/],
    [
      { ...base, AUTORESPONDER_QUOTA_TABLE: 'quota' },
      'AUTORESPONDER_HASH_KEY',
      /required when AUTORESPONDER_QUOTA_TABLE/,
    ],
    [{ ...base, AUTORESPONDER_PORT: '1025' }, 'AUTORESPONDER_PORT', /differ from SMTP_PORT/],
    [{ ...base, AUTORESPONDER_PORT: '70000' }, 'AUTORESPONDER_PORT', /./],
    [{ ...base, AUTORESPONDER_DAILY_LIMIT: '0' }, 'AUTORESPONDER_DAILY_LIMIT', /whole number > 0/],
    [{ ...base, AUTORESPONDER_QUOTA_WINDOW: 'tomorrow' }, 'AUTORESPONDER_QUOTA_WINDOW', /duration/],
    [{ ...base, AUTORESPONDER_CONFIG_REFRESH: '0' }, 'AUTORESPONDER_CONFIG_REFRESH', /> 0/],
    [{ ...base, AUTORESPONDER_EXEMPT_DOMAINS: 'localhost' }, 'AUTORESPONDER_EXEMPT_DOMAINS', /not a domain/],
    [{ ...base, AUTORESPONDER_REQUIRE_DKIM: 'sometimes' }, 'AUTORESPONDER_REQUIRE_DKIM', /./],
    [
      { ...base, DKIM_DOMAIN: 'example.org' },
      'DKIM_SELECTOR',
      /required when another DKIM_\* variable is set/,
    ],
    [
      { ...base, DKIM_DOMAIN: 'example.org', DKIM_SELECTOR: 's', DKIM_PRIVATE_KEY_PATH: '/nonexistent.pem' },
      'DKIM_PRIVATE_KEY_PATH',
      /cannot read/,
    ],
  ];
  for (const [env, variable, problem] of cases) {
    const err = configError(env);
    assert.equal(err.variable, variable, JSON.stringify(env));
    assert.match(err.message, problem);
    assert.ok(!err.message.includes('\n'));
  }
  const short = configError({ ...base, AUTORESPONDER_HASH_KEY: 'hunter2' });
  assert.equal(short.variable, 'AUTORESPONDER_HASH_KEY');
  assert.ok(!short.message.includes('hunter2'), short.message);
  const url = configError({ ...base, AUTORESPONDER_SMTP_URL: 'http://user:topsecret@host' });
  assert.equal(url.variable, 'AUTORESPONDER_SMTP_URL');
  assert.ok(!url.message.includes('topsecret'), url.message);
});

test('a relay whose configuration file is bad does not start, and says which entry in one line', async () => {
  const dir = tempDir('bad-conf-');
  const file = path.join(dir, 'conf.json');
  fs.writeFileSync(
    file,
    JSON.stringify([{ email_addr: 'get@example.org', body: 'x', attachments: null, sendmethod: 'SES' }]),
  );
  const r = spawnSync(process.execPath, [MAIN], {
    env: {
      PATH: process.env.PATH,
      SPOOL_DIR: path.join(dir, 'spool'),
      SMTP_HOST: '127.0.0.1',
      SMTP_PORT: String(await freePort()),
      METRICS_HOST: '127.0.0.1',
      METRICS_PORT: String(await freePort()),
      AUTORESPONDER_HOST: '127.0.0.1',
      AUTORESPONDER_PORT: String(await freePort()),
      AUTORESPONDER_CONFIG: file,
      AUTORESPONDER_FROM: 'noreply@example.org',
      LOG_LEVEL: 'silent',
    },
    encoding: 'utf8',
    timeout: 20_000,
  });
  assert.notEqual(r.status, 0);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(
    lines[0],
    /AUTORESPONDER_CONFIG: .*conf\.json: entry 1 \(get@example\.org\): unknown field "sendmethod"/,
  );
});
