import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { AuthUnavailableError } from '../src/auth/authenticator';
import { silentLogger } from '../src/observability/logger';
import { ApiKeyAuthenticator, generateApiKey, hashApiKey, parseApiKeyItem } from '../src/auth/api-keys';
import { startDynalite, type Dynalite } from './helpers/dynalite';

const TABLE = 'api-keys-test';
const KEY_PLAIN = 'key-without-restrictions';
const KEY_DOMAINS = 'key-with-domains';
const KEY_LIST = 'key-with-list-domains';
const KEY_DISABLED = 'key-disabled';
const KEY_BARE = 'key-bare-item';

describe('API keys', () => {
  let db: Dynalite;
  const make = (cacheTtlMs = 60_000) =>
    new ApiKeyAuthenticator({ client: db.client(), table: TABLE, cacheTtlMs, logger: silentLogger });

  before(async () => {
    db = await startDynalite();
    await db.createTable(TABLE, 'api_key_hash');
    await db.put(TABLE, {
      api_key_hash: { S: hashApiKey(KEY_PLAIN) },
      name: { S: 'billing-service' },
      enabled: { BOOL: true },
    });
    await db.put(TABLE, {
      api_key_hash: { S: hashApiKey(KEY_DOMAINS) },
      name: { S: 'newsletter' },
      allowed_from_domains: { SS: ['Example.COM', '@mail.example.org'] },
    });
    await db.put(TABLE, {
      api_key_hash: { S: hashApiKey(KEY_LIST) },
      name: { S: 'list-form' },
      allowed_from_domains: { L: [{ S: 'a.example' }, { S: 'b.example' }] },
    });
    await db.put(TABLE, {
      api_key_hash: { S: hashApiKey(KEY_DISABLED) },
      name: { S: 'old' },
      enabled: { BOOL: false },
    });
    await db.put(TABLE, { api_key_hash: { S: hashApiKey(KEY_BARE) } });
  });
  after(async () => {
    await db.close();
  });

  test('hash is the lowercase hex SHA-256; generated keys are long and distinct', () => {
    assert.equal(hashApiKey('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    const a = generateApiKey();
    assert.match(a, /^[A-Za-z0-9_-]{43}$/);
    assert.notEqual(a, generateApiKey());
    assert.deepEqual(
      parseApiKeyItem({ api_key_hash: { S: 'h' }, allowed_from_domains: { S: 'x.com, @Y.com' } }),
      {
        hash: 'h',
        enabled: true,
        allowedFromDomains: ['x.com', 'y.com'],
        policy: { priority: 'normal' },
      },
    );
  });

  test('a valid key is accepted whatever the username; the user is the item name', async () => {
    const auth = make();
    const billing = { user: 'billing-service', tenant: { name: 'billing-service', priority: 'normal' } };
    assert.deepEqual(await auth.authenticate('anything', KEY_PLAIN), billing);
    assert.deepEqual(await auth.authenticate('', KEY_PLAIN), billing);
    const bare = `apikey-${hashApiKey(KEY_BARE).slice(0, 8)}`;
    assert.deepEqual(await make().authenticate('x', KEY_BARE), {
      user: bare,
      tenant: { name: bare, priority: 'normal' },
    });
  });

  test('unknown key, empty key and disabled key are refused', async () => {
    const auth = make();
    assert.equal(await auth.authenticate('billing-service', 'wrong-key'), null);
    assert.equal(await auth.authenticate('billing-service', ''), null);
    assert.equal(await auth.authenticate('old', KEY_DISABLED), null);
  });

  test('From-domain restriction in string-set and list form, lowercased', async () => {
    const auth = make();
    assert.deepEqual(await auth.authenticate('n', KEY_DOMAINS), {
      user: 'newsletter',
      allowedFromDomains: ['example.com', 'mail.example.org'],
      tenant: { name: 'newsletter', priority: 'normal' },
    });
    assert.deepEqual(await auth.authenticate('n', KEY_LIST), {
      user: 'list-form',
      allowedFromDomains: ['a.example', 'b.example'],
      tenant: { name: 'list-form', priority: 'normal' },
    });
  });

  test('answers are cached, refusals too, and expire', async () => {
    const auth = make(200);
    db.resetRequests();
    await auth.authenticate('a', KEY_PLAIN);
    await auth.authenticate('b', KEY_PLAIN);
    await auth.authenticate('a', 'nope');
    await auth.authenticate('a', 'nope');
    assert.equal(db.requests('GetItem'), 2, 'one request per distinct key');
    // A key added after a refusal works once the negative answer expires.
    const late = 'late-key';
    assert.equal(await auth.authenticate('a', late), null);
    await db.put(TABLE, { api_key_hash: { S: hashApiKey(late) }, name: { S: 'late' } });
    assert.equal(await auth.authenticate('a', late), null, 'still the cached refusal');
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await auth.authenticate('a', late), {
      user: 'late',
      tenant: { name: 'late', priority: 'normal' },
    });
  });

  test('the table unreachable: AuthUnavailableError (not a refusal); works again afterwards', async () => {
    const auth = make();
    await db.stop();
    try {
      await assert.rejects(auth.authenticate('a', KEY_DOMAINS), AuthUnavailableError);
    } finally {
      await db.start();
    }
    assert.equal((await auth.authenticate('a', KEY_DOMAINS))?.user, 'newsletter');
  });
});
