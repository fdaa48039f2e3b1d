/**
 * Tenant policy (issue 11, ingress side): the policy attributes of an API-key item and the
 * SMTP_USER_POLICY_FILE entries are validated by one schema (SES's name rules, bounds); a malformed one
 * never widens access (the key is refused with 454 4.7.0 and a warning naming key and attribute; a bad
 * file stops the relay with one line); and every message the listener stores carries its tenant.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { before, describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import pino from 'pino';
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import { ApiKeyAuthenticator, generateApiKey, hashApiKey } from '../src/auth/api-keys';
import { parseTagString, policyOfItem, TenantPolicyError } from '../src/auth/tenant-policy';
import { ConfigError, loadConfig } from '../src/config';
import { silentLogger } from '../src/observability/logger';
import type { Spool } from '../src/spool/spool';
import { SqliteSpool } from '../src/spool/sqlite-spool';
import type { Reception } from '../src/types';
import { cleanupAfterAll } from './helpers/cleanup';
import { startDynalite, type Dynalite } from './helpers/dynalite';
import { startTestListener } from './helpers/ingress-listener';
import { RawSmtpClient } from './helpers/smtp-client';

const cleanups = cleanupAfterAll();
const plain = (u: string, p: string): string => Buffer.from(`\0${u}\0${p}`).toString('base64');
const N = (v: string): AttributeValue => ({ N: v });
const S = (v: string): AttributeValue => ({ S: v });

/** The attribute a malformed item is refused for (TenantPolicyError.field), or 'ok'. */
function verdict(item: Record<string, AttributeValue>): string {
  try {
    policyOfItem(item);
    return 'ok';
  } catch (err) {
    if (err instanceof TenantPolicyError) return err.field.split('.')[0];
    throw err;
  }
}

describe('API-key item policy attributes', () => {
  it('reads every attribute in DynamoDB types; absent means priority normal and no limits', () => {
    assert.deepEqual(policyOfItem({ api_key_hash: S('h'), name: S('n') }), { priority: 'normal' });
    assert.deepEqual(
      policyOfItem({
        rate_limit: N('2.5'),
        daily_quota: N('1000'),
        configuration_set: S('billing-events_1'),
        tags: { M: { app: S('billing'), team: S('pay-ments_2') } },
        priority: S('high'),
      }),
      {
        priority: 'high',
        rateLimit: 2.5,
        dailyQuota: 1000,
        configurationSet: 'billing-events_1',
        tags: { app: 'billing', team: 'pay-ments_2' },
      },
    );
    assert.deepEqual(policyOfItem({ tags: S(' app = billing , env=prod,') }).tags, {
      app: 'billing',
      env: 'prod',
    });
    assert.deepEqual(policyOfItem({ daily_quota: N('0'), priority: S('bulk') }), {
      priority: 'bulk',
      dailyQuota: 0,
    });
    assert.deepEqual(policyOfItem({ rate_limit: { NULL: true } }), { priority: 'normal' });
  });

  it('refuses attack and typo inputs, naming the attribute', () => {
    const cases: Array<[Record<string, AttributeValue>, string]> = [
      [{ rate_limit: N('-1') }, 'rate_limit'],
      [{ rate_limit: N('0') }, 'rate_limit'],
      [{ rate_limit: N('NaN') }, 'rate_limit'],
      [{ rate_limit: N('1e309') }, 'rate_limit'],
      [{ rate_limit: N('1e12') }, 'rate_limit'],
      [{ rate_limit: S('5') }, 'rate_limit'],
      [{ daily_quota: N('1.5') }, 'daily_quota'],
      [{ daily_quota: N('-3') }, 'daily_quota'],
      [{ daily_quota: N('99999999999') }, 'daily_quota'],
      [{ daily_quota: { BOOL: true } }, 'daily_quota'],
      [{ priority: S('urgent') }, 'priority'],
      [{ priority: S('HIGH') }, 'priority'],
      [{ priority: S('') }, 'priority'],
      [{ priority: N('1') }, 'priority'],
      [{ configuration_set: S('bad name') }, 'configuration_set'],
      [{ configuration_set: S('x'.repeat(65)) }, 'configuration_set'],
      [{ configuration_set: S('') }, 'configuration_set'],
      [{ configuration_set: S('événements') }, 'configuration_set'],
      [{ tags: { M: { app: S('bill ing') } } }, 'tags'],
      [{ tags: { M: { 'my app': S('x') } } }, 'tags'],
      [{ tags: { M: { app: S('x'.repeat(300)) } } }, 'tags'],
      [{ tags: { M: { ['x'.repeat(257)]: S('v') } } }, 'tags'],
      [{ tags: { M: { app: S('') } } }, 'tags'],
      [{ tags: { M: { app: N('1') } } }, 'tags'],
      [{ tags: { M: { 'ses:from-domain': S('x') } } }, 'tags'],
      [{ tags: S('app') }, 'tags'],
      [{ tags: S('app=a,app=b') }, 'tags'],
      [{ tags: S('a=b c') }, 'tags'],
      [{ tags: { L: [S('a=b')] } }, 'tags'],
      [{ tags: { M: Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`t${i}`, S('v')])) } }, 'tags'],
    ];
    for (const [item, attribute] of cases) {
      assert.equal(verdict(item), attribute, JSON.stringify(item).slice(0, 80));
    }
    assert.equal(
      verdict({ tags: { M: Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`t${i}`, S('v')])) } }),
      'ok',
    );
    assert.equal(
      verdict({ configuration_set: S('x'.repeat(64)), tags: S(`${'n'.repeat(256)}=${'v'.repeat(256)}`) }),
      'ok',
    );
    assert.throws(() => parseTagString('novalue'), TenantPolicyError);
  });
});

describe('SMTP_USER_POLICY_FILE', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tenant-policy-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hash = bcrypt.hashSync('pw', 4);
  const users = `app:${hash},batch:${hash}`;
  let n = 0;
  const load = (content: string | undefined, smtpUsers = users) => {
    const file = path.join(dir, `policy-${n++}.json`);
    if (content !== undefined) fs.writeFileSync(file, content);
    return loadConfig({ SMTP_USERS: smtpUsers, SMTP_USER_POLICY_FILE: file, SPOOL_DIR: dir });
  };
  /** The ConfigError's one line (variable: problem). */
  const problem = (content: string | undefined, smtpUsers?: string): string => {
    try {
      load(content, smtpUsers);
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      assert.equal(err.variable, 'SMTP_USER_POLICY_FILE');
      assert.ok(!err.message.includes('\n'), 'one line');
      assert.ok(!err.message.includes(hash), 'no password hash in the message');
      return err.message;
    }
    assert.fail('expected a ConfigError');
  };

  it('gives each listed user its policy; the others get none', () => {
    const config = load(
      JSON.stringify({
        app: {
          rate_limit: 5,
          daily_quota: 1000,
          configuration_set: 'x',
          tags: { app: 'billing' },
          priority: 'high',
        },
      }),
    );
    const [app, batch] = config.ingress.users;
    assert.deepEqual(app.policy, {
      priority: 'high',
      rateLimit: 5,
      dailyQuota: 1000,
      configurationSet: 'x',
      tags: { app: 'billing' },
    });
    assert.equal(batch.policy, undefined);
    assert.equal(loadConfig({ SMTP_USERS: users, SPOOL_DIR: dir }).ingress.users[0].policy, undefined);
  });

  it('a bad file stops the relay with one line naming the user and the field', () => {
    assert.match(problem('[]'), /must be a JSON object/);
    assert.match(problem('"app"'), /must be a JSON object/);
    assert.match(problem('null'), /must be a JSON object/);
    assert.match(problem('42'), /must be a JSON object/);
    assert.match(problem('{ "app": '), /is not JSON/);
    assert.match(problem('{ "app": [] }'), /user "app": must be an object/);
    assert.match(problem('{ "nobody": {} }'), /user "nobody" is not in SMTP_USERS/);
    assert.match(problem('{ "app": {} }', ''), /user "app" is not in SMTP_USERS/);
    assert.match(problem('{ "app": { "rate_limit": -1 } }'), /user "app": rate_limit: must be > 0/);
    assert.match(problem('{ "app": { "rate_limit": "5" } }'), /user "app": rate_limit: must be a number/);
    assert.match(problem('{ "app": { "rate_limit": 1e400 } }'), /user "app": rate_limit/);
    assert.match(
      problem('{ "app": { "daily_quota": 2.5 } }'),
      /user "app": daily_quota: must be a whole number/,
    );
    assert.match(
      problem('{ "app": { "priority": "urgent" } }'),
      /user "app": priority: must be one of high, normal, bulk/,
    );
    assert.match(problem('{ "app": { "tags": { "app": "a b" } } }'), /user "app": tags\.app: only letters/);
    assert.match(
      problem(`{ "app": { "tags": { "app": "${'x'.repeat(300)}" } } }`),
      /user "app": tags\.app: longer than 256/,
    );
    assert.match(problem('{ "app": { "tags": "app=billing" } }'), /user "app": tags: must be an object/);
    assert.match(problem('{ "app": { "rate": 5 } }'), /user "app": rate: unknown field/);
    assert.match(problem('{ "app": { "configuration_set": "a/b" } }'), /user "app": configuration_set/);
    assert.match(problem(undefined), /cannot read .*ENOENT/);
  });
});

/** One AUTH PLAIN session: the AUTH reply and the client (EHLO done). */
async function authSession(
  port: number,
  user: string,
  pass: string,
): Promise<{ code: number; c: RawSmtpClient }> {
  const c = await RawSmtpClient.connect(port);
  await c.read();
  await c.command('EHLO client.test');
  const r = await c.command(`AUTH PLAIN ${plain(user, pass)}`, 10_000);
  return { code: r.code, c };
}

/** MAIL, RCPT and a small DATA in an open session; the final reply code. */
async function sendOne(c: RawSmtpClient, to = 'someone@example.com'): Promise<number> {
  assert.equal((await c.command('MAIL FROM:<app@example.com>')).code, 250);
  assert.equal((await c.command(`RCPT TO:<${to}>`)).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  return (await c.command('From: app@example.com\r\nSubject: t\r\n\r\nhello\r\n.')).code;
}

describe('the tenant of every stored message, and malformed keys refused at AUTH', () => {
  const TABLE = 'tenant-policy-keys';
  const GOOD = generateApiKey();
  const BAD_PRIORITY = generateApiKey();
  const BAD_TAG = generateApiKey();
  let db: Dynalite;
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) });

  before(async () => {
    db = await startDynalite();
    cleanups.push(() => db.close());
    await db.createTable(TABLE, 'api_key_hash');
    await db.put(TABLE, {
      api_key_hash: S(hashApiKey(GOOD)),
      name: S('billing'),
      daily_quota: N('100'),
      configuration_set: S('billing-events'),
      tags: { M: { app: S('billing') } },
      priority: S('high'),
    });
    await db.put(TABLE, {
      api_key_hash: S(hashApiKey(BAD_PRIORITY)),
      name: S('urgent-key'),
      priority: S('urgent'),
    });
    await db.put(TABLE, {
      api_key_hash: S(hashApiKey(BAD_TAG)),
      name: S('tag-key'),
      tags: S('app=bill ing'),
    });
  });

  it('an API key carries its name and policy into reception.tenant; a malformed item gets 454 4.7.0 and a warning', async () => {
    const authenticator = new ApiKeyAuthenticator({
      client: db.client(),
      table: TABLE,
      cacheTtlMs: 60_000,
      logger,
    });
    const { listener, spool, port } = await startTestListener(
      { trustedNetworks: [], allowInsecureAuth: true },
      { authenticator, authFailureDelayMs: 0, logger },
    );
    cleanups.push(() => listener.close(1000));

    const good = await authSession(port, 'any', GOOD);
    assert.equal(good.code, 235);
    assert.equal(await sendOne(good.c), 250);
    good.c.close();
    assert.deepEqual(spool.messages[0].reception.tenant, {
      name: 'billing',
      priority: 'high',
      dailyQuota: 100,
      configurationSet: 'billing-events',
      tags: { app: 'billing' },
    });

    for (const [key, name, attribute] of [
      [BAD_PRIORITY, 'urgent-key', 'priority'],
      [BAD_TAG, 'tag-key', 'tags'],
    ]) {
      for (let i = 0; i < 2; i++) {
        // Twice: the second answer comes from the cache and is the same refusal.
        const bad = await authSession(port, 'any', key);
        assert.equal(bad.code, 454, `${name}: 454 4.7.0, never accepted with the attribute ignored`);
        assert.equal((await bad.c.command('MAIL FROM:<app@example.com>')).code, 530);
        bad.c.close();
      }
      const warning = lines.find((l) => l.event === 'apikey:invalid-policy' && l.key === name);
      assert.ok(warning, `a warning names ${name}`);
      assert.equal(warning.attribute, attribute);
      assert.equal(warning.level, 40);
      assert.ok(!JSON.stringify(warning).includes(key), 'never the key itself');
    }
    assert.equal(spool.messages.length, 1);
  });

  it('an SMTP user carries its SMTP_USER_POLICY_FILE policy; trusted networks are one tenant of their own', async () => {
    const bcryptHash = bcrypt.hashSync('pw', 4);
    const { listener, spool, port } = await startTestListener({
      users: [
        { username: 'app', bcryptHash, policy: { priority: 'bulk', rateLimit: 3 } },
        { username: 'plain', bcryptHash },
      ],
      allowInsecureAuth: true,
    });
    cleanups.push(() => listener.close(1000));
    for (const user of ['app', 'plain']) {
      const s = await authSession(port, user, 'pw');
      assert.equal(s.code, 235);
      assert.equal(await sendOne(s.c), 250);
      s.c.close();
    }
    const trusted = await RawSmtpClient.connect(port);
    await trusted.read();
    await trusted.command('EHLO client.test');
    assert.equal(await sendOne(trusted), 250);
    trusted.close();
    assert.deepEqual(
      spool.messages.map((m) => m.reception.tenant),
      [
        { name: 'app', priority: 'bulk', rateLimit: 3 },
        { name: 'plain', priority: 'normal' },
        { name: 'trusted-networks', priority: 'normal' },
      ],
    );
  });
});

describe('a real SqliteSpool receives reception.tenant', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tenant-spool-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  let sqlite: SqliteSpool;
  const stores: Array<Omit<Reception, 'receivedAt'>> = [];
  let port: number;

  before(async () => {
    sqlite = await SqliteSpool.open({ dir, failedRetentionMs: 60_000, logger: silentLogger });
    // A spy on our own Spool interface: what the listener hands to the real spool's store.
    const spool = new Proxy(sqlite, {
      get(target, prop) {
        if (prop === 'store') {
          return (...args: Parameters<Spool['store']>) => {
            stores.push(args[2]);
            return target.store(...args);
          };
        }
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const bcryptHash = bcrypt.hashSync('pw', 4);
    const started = await startTestListener(
      {
        users: [{ username: 'news', bcryptHash, policy: { priority: 'bulk', dailyQuota: 10 } }],
        allowInsecureAuth: true,
      },
      { spool },
    );
    port = started.port;
    cleanups.push(async () => {
      await started.listener.close(1000);
      await sqlite.close();
    });
    const s = await authSession(port, 'news', 'pw');
    assert.equal(s.code, 235);
    assert.equal(await sendOne(s.c), 250);
    s.c.close();
  });

  it('store() is called with the tenant of the authenticated user', () => {
    assert.equal(stores.length, 1);
    assert.deepEqual(stores[0].tenant, { name: 'news', priority: 'bulk', dailyQuota: 10 });
  });

  it('the tenant is read back from the spool (lease)', () => {
    const [leased] = sqlite.lease(10);
    assert.ok(leased);
    assert.deepEqual(leased.reception.tenant, { name: 'news', priority: 'bulk', dailyQuota: 10 });
  });
});
