/**
 * A tenant's daily_quota over real SMTP (issue 11): 451 4.7.1 at RCPT TO when a recipient would exceed it
 * and at MAIL FROM once it is spent; counted only when the message got its 250; a new UTC day starts
 * again (injected clock); two ingresses sharing a real redis-server stop at the quota together; Redis down
 * answers 451 4.3.0 for tenants with a quota (and nobody else); one relay process wired end to end.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import Redis from 'ioredis';
import type { SmtpUser } from '../src/config';
import { registry } from '../src/observability/metrics';
import { createTenantQuota, utcDay, type TenantQuota } from '../src/policy/tenant-quota';
import { cleanupAfterAll } from './helpers/cleanup';
import { startTestListener } from './helpers/ingress-listener';
import { REDIS_MISSING, REDIS_SERVER, startRedisServer, type RedisServer } from './helpers/redis-server';
import { metricValue, startRelayProcess, stopRelayProcess, tempDir } from './helpers/relay-process';
import { RawSmtpClient, type SmtpReply } from './helpers/smtp-client';

const cleanups = cleanupAfterAll();
const HASH = bcrypt.hashSync('pw', 4);
const plain = (u: string, p: string): string => Buffer.from(`\0${u}\0${p}`).toString('base64');

/** Users: `quota` with daily_quota 3 (unless given), `free` without a quota. */
function users(dailyQuota = 3): SmtpUser[] {
  return [
    { username: 'quota', bcryptHash: HASH, policy: { priority: 'normal', dailyQuota } },
    { username: 'free', bcryptHash: HASH },
  ];
}

async function listen(quota?: TenantQuota, dailyQuota?: number): Promise<number> {
  const { listener, port } = await startTestListener(
    { users: users(dailyQuota), trustedNetworks: [], allowInsecureAuth: true },
    quota ? { quota } : {},
  );
  cleanups.push(() => listener.close(1000));
  return port;
}

/** An authenticated session (EHLO, AUTH PLAIN done). */
async function session(port: number, user = 'quota'): Promise<RawSmtpClient> {
  const c = await RawSmtpClient.connect(port);
  cleanups.push(() => c.close());
  await c.read();
  await c.command('EHLO client.test');
  assert.equal((await c.command(`AUTH PLAIN ${plain(user, 'pw')}`)).code, 235);
  return c;
}

/** One transaction: MAIL, each RCPT, DATA if a recipient was accepted; every reply. */
async function transaction(
  c: RawSmtpClient,
  recipients: string[],
): Promise<{ mail: SmtpReply; rcpts: SmtpReply[]; data?: SmtpReply }> {
  const mail = await c.command('MAIL FROM:<app@example.com>');
  const rcpts: SmtpReply[] = [];
  if (mail.code !== 250) return { mail, rcpts };
  for (const r of recipients) rcpts.push(await c.command(`RCPT TO:<${r}>`));
  if (!rcpts.some((r) => r.code === 250)) {
    await c.command('RSET');
    return { mail, rcpts };
  }
  assert.equal((await c.command('DATA')).code, 354);
  const data = await c.command('From: app@example.com\r\nSubject: q\r\n\r\nhello\r\n.');
  return { mail, rcpts, data };
}

const rcpt = (i: number) => `r${i}@example.com`;
const QUOTA_REPLY = /^451 4\.7\.1 .*quota/;

describe('daily_quota in one ingress (counted in memory)', () => {
  it('451 4.7.1 at RCPT when a recipient would exceed it, at MAIL FROM once spent; others unaffected', async () => {
    const port = await listen();
    const c = await session(port);
    const t1 = await transaction(c, [rcpt(1), rcpt(2)]);
    assert.equal(t1.data?.code, 250);
    const t2 = await transaction(c, [rcpt(3), rcpt(4), rcpt(3)]);
    assert.equal(t2.rcpts[0].code, 250);
    assert.match(t2.rcpts[1].text, QUOTA_REPLY, 'the 4th recipient of the day would exceed 3');
    assert.equal(t2.rcpts[2].code, 250, 'a recipient given again does not count twice');
    assert.equal(t2.data?.code, 250, 'the recipients accepted before are sent');
    const t3 = await transaction(c, [rcpt(5)]);
    assert.match(t3.mail.text, QUOTA_REPLY, 'spent: refused at MAIL FROM');
    assert.match(t3.mail.text, /3 recipients per UTC day/);
    // Another tenant of the same relay is not limited by it.
    const free = await session(port, 'free');
    assert.equal((await transaction(free, [rcpt(6), rcpt(7), rcpt(8), rcpt(9)])).data?.code, 250);
    const metrics = await registry.metrics();
    assert.ok(metricValue(metrics, 'ses_relay_tenant_quota_refusals_total', { tenant: 'quota' }) >= 2);
    assert.ok(metricValue(metrics, 'ses_relay_tenant_recipients_accepted_total', { tenant: 'quota' }) >= 3);
    assert.ok(metricValue(metrics, 'ses_relay_tenant_recipients_accepted_total', { tenant: 'free' }) >= 4);
  });

  it('counted only on 250: RSET, a dropped connection and a refused DATA cost nothing', async () => {
    const port = await listen();
    const a = await session(port);
    assert.equal((await a.command('MAIL FROM:<app@example.com>')).code, 250);
    for (const i of [1, 2, 3]) assert.equal((await a.command(`RCPT TO:<${rcpt(i)}>`)).code, 250);
    assert.match((await a.command(`RCPT TO:<${rcpt(4)}>`)).text, QUOTA_REPLY, 'held while in progress');
    assert.equal((await a.command('RSET')).code, 250);
    // A new transaction ends the old one's hold.
    assert.equal((await a.command('MAIL FROM:<app@example.com>')).code, 250);
    for (const i of [1, 2, 3]) assert.equal((await a.command(`RCPT TO:<${rcpt(i)}>`)).code, 250);
    a.close(); // dropped before DATA
    // A body that is too big: 552, not counted.
    const { listener, port: small } = await startTestListener({
      users: users(),
      trustedNetworks: [],
      allowInsecureAuth: true,
      maxMessageSize: 200,
    });
    cleanups.push(() => listener.close(1000));
    const b = await session(small);
    assert.equal((await b.command('MAIL FROM:<app@example.com>')).code, 250);
    for (const i of [1, 2, 3]) assert.equal((await b.command(`RCPT TO:<${rcpt(i)}>`)).code, 250);
    assert.equal((await b.command('DATA')).code, 354);
    assert.equal((await b.command(`Subject: big\r\n\r\n${'x'.repeat(500)}\r\n.`)).code, 552);
    assert.equal(
      (await transaction(b, [rcpt(1), rcpt(2), rcpt(3)])).data?.code,
      250,
      'the whole quota is left',
    );
    // Back on the first listener: after the drop, the whole quota is there again.
    await new Promise((r) => setTimeout(r, 100));
    const c = await session(port);
    assert.equal((await transaction(c, [rcpt(1), rcpt(2), rcpt(3)])).data?.code, 250);
    assert.match((await transaction(c, [rcpt(4)])).mail.text, QUOTA_REPLY);
  });

  it('concurrent sessions of one tenant never go over it together', async () => {
    const port = await listen();
    const sessions = await Promise.all([1, 2, 3, 4, 5].map(() => session(port)));
    for (const s of sessions) assert.equal((await s.command('MAIL FROM:<app@example.com>')).code, 250);
    const replies = await Promise.all(sessions.map((s, i) => s.command(`RCPT TO:<${rcpt(i)}>`)));
    assert.equal(replies.filter((r) => r.code === 250).length, 3);
    assert.equal(replies.filter((r) => QUOTA_REPLY.test(r.text)).length, 2);
  });

  it('a new UTC day starts from 0 (injected clock); daily_quota 0 sends nothing', async () => {
    let now = Date.parse('2025-03-09T23:59:58Z');
    const port = await listen(createTenantQuota({ now: () => now }));
    const c = await session(port);
    assert.equal((await transaction(c, [rcpt(1), rcpt(2), rcpt(3)])).data?.code, 250);
    assert.match((await transaction(c, [rcpt(4)])).mail.text, QUOTA_REPLY);
    now = Date.parse('2025-03-10T00:00:01Z');
    assert.equal(utcDay(now), '2025-03-10');
    assert.equal((await transaction(c, [rcpt(4), rcpt(5), rcpt(6)])).data?.code, 250);
    assert.match((await transaction(c, [rcpt(7)])).mail.text, QUOTA_REPLY);

    const zero = await session(await listen(undefined, 0));
    assert.match((await transaction(zero, [rcpt(1)])).mail.text, QUOTA_REPLY);
  });
});

/**
 * A quota store as slow as a remote one, over the real in-memory counter: checks answer after `delayMs`,
 * those that arrive together in the same tick (one timer), as Redis replies do; a count is written
 * `addDelayMs` after it was asked for.
 */
function slowQuota(delayMs: number, addDelayMs = delayMs): TenantQuota {
  const inner = createTenantQuota();
  let batch: Array<() => void> = [];
  const later = <T>(f: () => Promise<T>): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      if (batch.length === 0) {
        setTimeout(() => {
          const run = batch;
          batch = [];
          for (const r of run) r();
        }, delayMs);
      }
      batch.push(() => void f().then(resolve, reject));
    });
  return {
    kind: 'redis',
    check: (tenant, n) => later(() => inner.check(tenant, n)),
    add: (tenant, n) =>
      new Promise<void>((resolve, reject) =>
        setTimeout(() => void inner.add(tenant, n).then(resolve, reject), addDelayMs),
      ),
    close: () => inner.close(),
  };
}

describe('daily_quota with a quota store that answers slowly (as Redis does)', () => {
  it('the last place goes to one session when two checks answer in the same tick', async () => {
    const port = await listen(slowQuota(50), 1);
    const [a, b] = await Promise.all([session(port), session(port)]);
    await Promise.all([a, b].map((c) => c.command('MAIL FROM:<app@example.com>')));
    const replies = await Promise.all([a.command(`RCPT TO:<${rcpt(1)}>`), b.command(`RCPT TO:<${rcpt(2)}>`)]);
    assert.deepEqual(replies.map((r) => r.code).sort(), [250, 451], replies.map((r) => r.text).join(' | '));
  });

  it('a message just acknowledged still counts while its count is being written', async () => {
    const port = await listen(slowQuota(20, 500), 1);
    const a = await session(port);
    const b = await session(port);
    assert.equal((await transaction(a, [rcpt(1)])).data?.code, 250);
    // The count of a's recipient is on its way (500 ms); b asks now.
    const t = await transaction(b, [rcpt(2)]);
    assert.match(t.mail.text, QUOTA_REPLY);
  });
});

describe('daily_quota shared through Redis', () => {
  let redis: RedisServer;
  before(async () => {
    if (!REDIS_SERVER) return;
    redis = await startRedisServer();
    cleanups.push(() => redis.close());
  });

  it('two ingresses sharing Redis stop at the quota together; the counter expires after ~2 days', async (t) => {
    if (!REDIS_SERVER) return t.skip(REDIS_MISSING);
    const quotas = [1, 2].map(() => createTenantQuota({ redisUrl: redis.url, limiterId: 'shared-test' }));
    for (const q of quotas) cleanups.push(() => q.close());
    const [portA, portB] = [await listen(quotas[0], 4), await listen(quotas[1], 4)];
    const a = await session(portA);
    const b = await session(portB);
    const client = new Redis(redis.url);
    cleanups.push(() => client.disconnect());
    const key = `ses-relay:{shared-test}:tenant-quota:${utcDay(Date.now())}:quota`;
    // Another replica sees a message's recipients once its count is written (just after the 250).
    const counted = async (n: number) => {
      for (let i = 0; i < 100 && Number(await client.get(key)) < n; i++)
        await new Promise((r) => setTimeout(r, 10));
    };
    assert.equal((await transaction(a, [rcpt(1), rcpt(2)])).data?.code, 250);
    await counted(2);
    assert.equal((await transaction(b, [rcpt(3)])).data?.code, 250);
    const last = await transaction(b, [rcpt(4), rcpt(5)]);
    assert.equal(last.rcpts[0].code, 250);
    assert.match(last.rcpts[1].text, QUOTA_REPLY, "B sees A's recipients");
    assert.equal(last.data?.code, 250);
    await counted(4);
    assert.match((await transaction(a, [rcpt(6)])).mail.text, QUOTA_REPLY, "A sees B's");
    assert.match((await transaction(b, [rcpt(6)])).mail.text, QUOTA_REPLY);

    assert.equal(await client.get(key), '4');
    const ttl = await client.pttl(key);
    assert.ok(ttl > 47 * 3600_000 && ttl <= 48 * 3600_000, `expires in ~2 days (${ttl} ms)`);
  });

  it('Redis down: 451 4.3.0 for a tenant with a quota, nobody else; back when Redis is', async (t) => {
    if (!REDIS_SERVER) return t.skip(REDIS_MISSING);
    const quota = createTenantQuota({ redisUrl: redis.url, limiterId: 'down-test', commandTimeoutMs: 300 });
    cleanups.push(() => quota.close());
    const port = await listen(quota, 100);
    const c = await session(port);
    assert.equal((await transaction(c, [rcpt(1)])).data?.code, 250);
    await redis.stop();
    const refused = await transaction(c, [rcpt(2)]);
    assert.match(refused.mail.text, /^451 4\.3\.0 .*quota/i);
    const free = await session(port, 'free');
    assert.equal(
      (await transaction(free, [rcpt(3)])).data?.code,
      250,
      'a tenant without a quota is unaffected',
    );
    await redis.restart();
    let code = 0;
    for (let i = 0; i < 50 && code !== 250; i++) {
      await new Promise((r) => setTimeout(r, 100));
      code = (await transaction(c, [rcpt(4)])).data?.code ?? 0;
    }
    assert.equal(code, 250, 'accepted again once Redis answers');
  });

  it('a relay process: SMTP_USER_POLICY_FILE and REDIS_URL wired end to end', async (t) => {
    if (!REDIS_SERVER) return t.skip(REDIS_MISSING);
    const dir = tempDir();
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const policyFile = path.join(dir, 'policy.json');
    fs.writeFileSync(policyFile, JSON.stringify({ quota: { daily_quota: 2, priority: 'high' } }));
    const relay = await startRelayProcess({
      env: {
        SMTP_USERS: `quota:${HASH}`,
        SMTP_USER_POLICY_FILE: policyFile,
        SMTP_ALLOW_INSECURE_AUTH: 'true',
        REDIS_URL: redis.url,
        LIMITER_ID: 'relay-test',
      },
    });
    cleanups.push(() => stopRelayProcess(relay));
    const c = await session(relay.smtpPort);
    const t1 = await transaction(c, [rcpt(1), rcpt(2), rcpt(3)]);
    assert.match(t1.rcpts[2].text, QUOTA_REPLY);
    assert.equal(t1.data?.code, 250);
    await new Promise((r) => setTimeout(r, 100));
    assert.match((await transaction(c, [rcpt(4)])).mail.text, QUOTA_REPLY);
    const metrics = await relay.metrics();
    assert.equal(metricValue(metrics, 'ses_relay_tenant_recipients_accepted_total', { tenant: 'quota' }), 2);
    assert.equal(metricValue(metrics, 'ses_relay_tenant_quota_refusals_total', { tenant: 'quota' }), 2);
  });
});
