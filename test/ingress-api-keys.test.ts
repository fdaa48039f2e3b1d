/**
 * API-key AUTH over real SMTP with a real DynamoDB (dynalite): an outage of the key table does not give free
 * guesses of static passwords (delay + lockout), and the relay's logs never hold what a client typed into
 * the user field.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import { authenticatorChain } from '../src/ingress/authenticator-chain';
import { StaticUserAuthenticator } from '../src/ingress/static-users';
import { silentLogger } from '../src/observability/logger';
import { ApiKeyAuthenticator, generateApiKey, hashApiKey } from '../src/policy/api-keys';
import { cleanupAfterAll } from './helpers/cleanup';
import { startDynalite, type Dynalite } from './helpers/dynalite';
import { startTestListener } from './helpers/ingress-listener';
import { startRelayProcess, stopRelayProcess } from './helpers/relay-process';
import { RawSmtpClient } from './helpers/smtp-client';

const KEYS_TABLE = 'ingress-api-keys';
const OPEN_KEY = generateApiKey();
const plain = (u: string, p: string): string => Buffer.from(`\0${u}\0${p}`).toString('base64');
const cleanups = cleanupAfterAll();

let db: Dynalite;
before(async () => {
  db = await startDynalite();
  cleanups.push(() => db.close());
  await db.createTable(KEYS_TABLE, 'api_key_hash');
  await db.put(KEYS_TABLE, { api_key_hash: { S: hashApiKey(OPEN_KEY) }, name: { S: 'open-key' } });
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
