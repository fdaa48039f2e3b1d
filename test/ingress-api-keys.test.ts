/**
 * API-key AUTH over real SMTP with a real DynamoDB (dynalite): a key's allowed_from_domains also holds for
 * the message's From: and Sender: headers, an outage of the key table does not give free guesses of static
 * passwords (delay + lockout), and the relay's logs never hold what a client typed into the user field.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import { authenticatorChain } from '../src/auth/authenticator-chain';
import { StaticUserAuthenticator } from '../src/auth/static-users';
import { silentLogger } from '../src/observability/logger';
import { HeaderSectionCheck } from '../src/ingress/message-headers';
import type { SmtpListener } from '../src/ingress/smtp-listener';
import { ApiKeyAuthenticator, generateApiKey, hashApiKey } from '../src/auth/api-keys';
import { cleanupAfterAll } from './helpers/cleanup';
import { startDynalite, type Dynalite } from './helpers/dynalite';
import { startTestListener } from './helpers/ingress-listener';
import type { MemorySpool } from './helpers/memory-spool';
import { startRelayProcess, stopRelayProcess } from './helpers/relay-process';
import { RawSmtpClient } from './helpers/smtp-client';

const KEYS_TABLE = 'ingress-api-keys';
const OPEN_KEY = generateApiKey();
const RESTRICTED_KEY = generateApiKey();
const plain = (u: string, p: string): string => Buffer.from(`\0${u}\0${p}`).toString('base64');
const cleanups = cleanupAfterAll();

let db: Dynalite;
before(async () => {
  db = await startDynalite();
  cleanups.push(() => db.close());
  await db.createTable(KEYS_TABLE, 'api_key_hash');
  await db.put(KEYS_TABLE, { api_key_hash: { S: hashApiKey(OPEN_KEY) }, name: { S: 'open-key' } });
  await db.put(KEYS_TABLE, {
    api_key_hash: { S: hashApiKey(RESTRICTED_KEY) },
    name: { S: 'restricted-key' },
    allowed_from_domains: { SS: ['allowed.example', 'Other.Example'] },
  });
});

async function authCode(port: number, user: string, pass: string): Promise<{ code: number; ms: number }> {
  const c = await RawSmtpClient.connect(port);
  try {
    await c.read();
    await c.command('EHLO client.test');
    const t0 = Date.now();
    const r = await c.command(`AUTH PLAIN ${plain(user, pass)}`, 10_000);
    return { code: r.code, ms: Date.now() - t0 };
  } finally {
    c.close();
  }
}

describe('API key allowed_from_domains also holds for the From: and Sender: headers', () => {
  let listener: SmtpListener;
  let spool: MemorySpool;
  let port: number;
  before(async () => {
    const authenticator = new ApiKeyAuthenticator({
      client: db.client(),
      table: KEYS_TABLE,
      cacheTtlMs: 60_000,
      logger: silentLogger,
    });
    ({ listener, spool, port } = await startTestListener(
      { users: [], trustedNetworks: [], allowInsecureAuth: true },
      { authenticator },
    ));
  });
  after(() => listener.close(1000));

  /** One authenticated session: envelope sender me@allowed.example; the reply to the end of DATA. */
  async function send(key: string, message: string | Buffer): Promise<string> {
    const c = await RawSmtpClient.connect(port);
    try {
      await c.read();
      await c.command('EHLO client.test');
      assert.equal((await c.command(`AUTH PLAIN ${plain('app', key)}`)).code, 235);
      assert.equal((await c.command('MAIL FROM:<me@allowed.example>')).code, 250);
      assert.equal((await c.command('RCPT TO:<to@example.net>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      c.write(message);
      c.write('\r\n.\r\n');
      const reply = (await c.read(10_000)).text;
      // the session goes on after a refusal
      assert.equal((await c.command('RSET')).code, 250);
      return reply;
    } finally {
      c.close();
    }
  }

  const REFUSED = /^553 5\.7\.1 From or Sender header not allowed for this API key( \(.+\))?$/;
  const ok = /^250 2\.0\.0 Ok: queued as /;

  it('accepts From (and Sender) addresses in the allowed domains, any case, with display names', async () => {
    assert.match(await send(RESTRICTED_KEY, 'From: me@allowed.example\r\nSubject: a\r\n\r\nbody'), ok);
    assert.match(
      await send(
        RESTRICTED_KEY,
        'From: "Me" <ME@Allowed.Example>, you@other.example\r\nSender: Ops <ops@OTHER.example>\r\n\r\nb',
      ),
      ok,
    );
    // "From:" lines in the body are body, not headers
    assert.match(await send(RESTRICTED_KEY, 'From: me@allowed.example\r\n\r\nFrom: boss@evil.example'), ok);
  });

  it('refuses any From or Sender address outside them with 553 5.7.1 and stores nothing', async () => {
    const stored = spool.messages.length;
    const cases = [
      'From: boss@evil.example\r\n\r\nb',
      'From: "me@allowed.example" <boss@evil.example>\r\n\r\nb',
      'From: me@allowed.example, boss@evil.example\r\n\r\nb',
      'From: team: me@allowed.example, boss@evil.example;\r\n\r\nb',
      'From: me@allowed.example\r\nFrom: boss@evil.example\r\n\r\nb',
      'From: me@allowed.example\r\nSender: boss@evil.example\r\n\r\nb',
      'From: Me\r\n <boss@evil.example>\r\n\r\nb',
      'from : boss@evil.example\r\n\r\nb',
      'From: me@allowed.example@evil.example\r\n\r\nb',
      'From: =?utf-8?B?bWVAYWxsb3dlZC5leGFtcGxl?=\r\n\r\nb',
      'Subject: no from at all\r\n\r\nb',
      '\r\nFrom: me@allowed.example',
      'From: boss@evil.example\nSubject: bare LF\n\nb',
      `X-Pad: ${'p'.repeat(110_000)}\r\nFrom: me@allowed.example\r\n\r\nb`,
    ];
    for (const message of cases)
      assert.match(await send(RESTRICTED_KEY, message), REFUSED, message.slice(0, 80));
    assert.equal(spool.messages.length, stored, 'nothing stored');
  });

  it('checks only the header section: a large body streams through, a key without domains is not checked', async () => {
    const big = Buffer.concat([
      Buffer.from('From: me@allowed.example\r\n\r\n'),
      Buffer.alloc(3 * 1024 * 1024, 'x\r\n'),
    ]);
    assert.match(await send(RESTRICTED_KEY, big), ok);
    assert.equal(spool.messages.at(-1)?.body.length, big.length + 2);
    assert.match(await send(OPEN_KEY, 'From: anyone@anywhere.example\r\n\r\nb'), ok);
  });
});

describe('HeaderSectionCheck', () => {
  it('finds the end of the header section across chunk boundaries and passes every byte through', async () => {
    const message = Buffer.from('From: a@allowed.example\r\nSubject: s\r\n\r\nbody\r\n');
    for (let split = 1; split < message.length; split++) {
      const seen: Array<string | undefined> = [];
      const t = new HeaderSectionCheck((section) => void seen.push(section));
      const out: Buffer[] = [];
      t.on('data', (d: Buffer) => out.push(d));
      t.write(message.subarray(0, split));
      t.end(message.subarray(split));
      await new Promise((r) => t.once('end', r));
      assert.deepEqual(seen, ['From: a@allowed.example\r\nSubject: s'], `split at ${split}`);
      assert.deepEqual(Buffer.concat(out), message);
    }
  });
});

describe('AUTH while the API key table is unreachable (SMTP_USERS and USE_APIKEY together)', () => {
  after(() => db.start());

  it('a static password guess still costs the delay and counts toward the lockout', async () => {
    const users = [{ username: 'alice', bcryptHash: bcrypt.hashSync('s3cret', 4) }];
    const apiKeys = new ApiKeyAuthenticator({
      client: db.client(),
      table: KEYS_TABLE,
      cacheTtlMs: 0,
      logger: silentLogger,
    });
    const authenticator = authenticatorChain([new StaticUserAuthenticator(users), apiKeys]);
    const { listener, port } = await startTestListener(
      { users, trustedNetworks: [], allowInsecureAuth: true, authMaxFailures: 3 },
      { authenticator, authFailureDelayMs: 200 },
    );
    try {
      await db.stop();
      // The static user still works during the outage, and is not a failure.
      assert.equal((await authCode(port, 'alice', 's3cret')).code, 235);
      const guesses = [];
      for (let i = 0; i < 3; i++) guesses.push(await authCode(port, 'alice', `guess-${i}`));
      assert.deepEqual(
        guesses.map((g) => g.code),
        [454, 454, 421],
        'two 454 4.7.0 (temporary), then the lockout',
      );
      for (const g of guesses) assert.ok(g.ms >= 190, `each unanswered guess is delayed (${g.ms} ms)`);
      assert.equal(
        (await authCode(port, 'alice', 's3cret')).code,
        421,
        'locked out, even the right password',
      );
    } finally {
      await listener.close(1000);
    }
  });
});

describe("the relay's logs never hold a user name that was not authenticated", () => {
  it('an API key typed into the user field appears only as a 12-hex SHA-256 prefix', async () => {
    const hash = bcrypt.hashSync('static-pw', 4);
    const relay = await startRelayProcess({
      env: {
        ...db.env,
        SMTP_USERS: `app:${hash}`,
        USE_APIKEY: 'true',
        DYNAMODB_API_KEYS_TABLE: KEYS_TABLE,
        SMTP_ALLOW_INSECURE_AUTH: 'true',
        LOG_LEVEL: 'debug',
      },
    });
    cleanups.push(() => stopRelayProcess(relay));
    const secretInUserField = generateApiKey();
    const wrongPassword = 'typo-of-the-static-pw';
    // The key in the user field, a wrong password: refused by both authenticators.
    assert.equal((await authCode(relay.smtpPort, secretInUserField, wrongPassword)).code, 535);
    // A valid key with the other secret as its label: accepted, the label is not logged either.
    assert.equal((await authCode(relay.smtpPort, secretInUserField, OPEN_KEY)).code, 235);
    const failed = await relay.waitForLog((l) => l.event === 'auth:failed');
    const refused = await relay.waitForLog((l) => l.msg === 'API key refused');
    await relay.waitForLog((l) => l.event === 'auth:accepted');
    await stopRelayProcess(relay);

    const userHash = createHash('sha256').update(secretInUserField).digest('hex').slice(0, 12);
    assert.equal(failed.userHash, userHash);
    assert.equal(refused.userHash, userHash);
    assert.equal(refused.keyHashPrefix, undefined, 'no hash of what was typed as the password');
    const all = relay.logs.map((l) => JSON.stringify(l)).join('\n');
    for (const secret of [
      secretInUserField,
      wrongPassword,
      OPEN_KEY,
      hashApiKey(wrongPassword).slice(0, 8),
    ]) {
      assert.ok(!all.includes(secret), `the logs contain ${secret}`);
    }
  });
});
