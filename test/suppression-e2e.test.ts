/**
 * The suppression list and API keys end to end: a real relay process (node dist/main.js) reading a real
 * DynamoDB-compatible server (dynalite, in this process) and delivering to the fake SES.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import nodemailer from 'nodemailer';
import { hashApiKey } from '../src/auth/api-keys';
import { startDynalite, type Dynalite } from './helpers/dynalite';
import { startFakeSes, type FakeSes } from './helpers/fake-ses';
import { markerOf, numberedMessage, relayClient } from './helpers/mail';
import {
  fakeSesEnv,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  type RelayProcess,
} from './helpers/relay-process';
import { RawSmtpClient } from './helpers/smtp-client';
import { cleanupAfterAll } from './helpers/cleanup';

const TABLE = 'e2e-suppression';
const KEYS_TABLE = 'e2e-api-keys';

let db: Dynalite;
const cleanups = cleanupAfterAll();

before(async () => {
  db = await startDynalite();
  await db.createTable(TABLE);
  await db.createTable(KEYS_TABLE, 'api_key_hash');
  await db.put(TABLE, { email: { S: 'bounced@example.com' }, reason: { S: 'bounce' } });
  await db.put(TABLE, { email: { S: 'mixed@example.org' }, reason: { S: 'complaint' } });
  await db.put(TABLE, { email: { S: '@blocked.example' }, reason: { S: 'manual' } });
  await db.put(KEYS_TABLE, { api_key_hash: { S: hashApiKey('key-open') }, name: { S: 'open-key' } });
  await db.put(KEYS_TABLE, {
    api_key_hash: { S: hashApiKey('key-restricted') },
    name: { S: 'restricted-key' },
    allowed_from_domains: { SS: ['allowed.example'] },
  });
});
after(async () => {
  await db?.close();
});

async function relayWith(ses: FakeSes, env: Record<string, string>): Promise<RelayProcess> {
  const relay = await startRelayProcess({
    env: {
      ...fakeSesEnv(ses.port),
      ...db.env,
      SES_RATE_LIMIT: '200',
      USE_BLOCKLIST: 'true',
      DYNAMODB_TABLE: TABLE,
      ...env,
    },
  });
  cleanups.push(() => stopRelayProcess(relay));
  return relay;
}

async function startSes(): Promise<FakeSes> {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  return ses;
}

const sentTo = (ses: FakeSes) => ses.messages.flatMap((m) => m.recipients).sort();

describe('suppression list through the relay', () => {
  test('drop: suppressed, mixed-case and domain-suppressed recipients are removed; one request per message', async () => {
    const ses = await startSes();
    const relay = await relayWith(ses, { BLOCKLIST_ACTION: 'drop' });
    const client = relayClient(relay.smtpPort, 1);
    cleanups.push(async () => client.close());
    db.resetRequests();

    // All recipients suppressed: accepted, completed without sending anything.
    const all = await client.sendMail(
      numberedMessage('all-suppressed', ['Bounced@Example.COM', 'x@Blocked.Example']),
    );
    await relay.waitForLog(
      (l) => l.event === 'message:suppressed' && l.queueId === /queued as (\S+)/.exec(all.response)?.[1],
    );
    assert.equal(db.requests('BatchGetItem'), 1, 'one BatchGetItem for 2 recipients and 2 domains');

    const mixed = await client.sendMail(
      numberedMessage('mixed', [
        'ok@example.net',
        'BOUNCED@example.com',
        'MIXED@Example.org',
        'someone@blocked.example',
      ]),
    );
    assert.match(mixed.response, /^250 /);
    await ses.waitFor(1, 15_000);
    assert.deepEqual(
      ses.messages.map((m) => markerOf(m.body)),
      ['mixed'],
    );
    assert.deepEqual(sentTo(ses), ['ok@example.net']);
    assert.equal(db.requests('BatchGetItem'), 2, 'one more request for the second message');

    // Cost per message, measured: 10 messages of 3 new recipients each, then the same 10 again (cached).
    db.resetRequests();
    for (let i = 0; i < 10; i++) {
      await client.sendMail(
        numberedMessage(`cost-${i}`, [`a${i}@one.example`, `b${i}@two.example`, `c${i}@three.example`]),
      );
    }
    await ses.waitFor(11, 20_000);
    const uncached = db.requests('BatchGetItem');
    for (let i = 0; i < 10; i++) {
      await client.sendMail(
        numberedMessage(`again-${i}`, [`a${i}@one.example`, `b${i}@two.example`, `c${i}@three.example`]),
      );
    }
    await ses.waitFor(21, 20_000);
    const cached = db.requests('BatchGetItem') - uncached;
    assert.equal(uncached, 10, 'without cache hits: exactly one BatchGetItem per message');
    assert.equal(cached, 0, 'repeated recipients: no request at all');
    assert.equal(db.requests(), 10, 'and no other DynamoDB request');
    assert.ok(!sentTo(ses).some((r) => /bounced|mixed|blocked/.test(r)));

    const m = await relay.metrics();
    assert.equal(metricValue(m, 'ses_relay_suppression_blocked_total'), 5);
    assert.equal(metricValue(m, 'ses_relay_suppression_available'), 1);
    assert.ok(metricValue(m, 'ses_relay_suppression_cache_hits_total') >= 30);
  });

  test('reject: 550 5.7.1 at RCPT TO for suppressed recipients, the others are delivered', async () => {
    const ses = await startSes();
    const relay = await relayWith(ses, { BLOCKLIST_ACTION: 'reject' });
    const c = await RawSmtpClient.connect(relay.smtpPort);
    cleanups.push(async () => c.close());
    assert.equal((await c.read()).code, 220);
    assert.equal((await c.command('EHLO client.test')).code, 250);
    assert.equal((await c.command('MAIL FROM:<sender@example.com>')).code, 250);
    assert.match((await c.command('RCPT TO:<Bounced@Example.com>')).text, /^550 5\.7\.1 /);
    assert.match((await c.command('RCPT TO:<anyone@BLOCKED.example>')).text, /^550 5\.7\.1 /);
    assert.match((await c.command('RCPT TO:<mixed@example.ORG>')).text, /^550 5\.7\.1 /);
    assert.equal((await c.command('RCPT TO:<fine@example.net>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    const reply = await c.command('Subject: reject-mode\r\nX-Test-Marker: reject-mode\r\n\r\nhello\r\n.');
    assert.equal(reply.code, 250);
    await ses.waitFor(1, 15_000);
    assert.deepEqual(sentTo(ses), ['fine@example.net']);

    // DynamoDB unreachable: an address not in the cache gets 451 4.3.0 (try later), never 250.
    await db.stop();
    try {
      assert.equal((await c.command('MAIL FROM:<sender@example.com>')).code, 250);
      assert.match((await c.command('RCPT TO:<unknown-yet@example.net>')).text, /^451 4\.3\.0 /);
    } finally {
      await db.start();
    }
    assert.equal((await c.command('RSET')).code, 250);
    assert.equal((await c.command('QUIT')).code, 221);

    // Cost in reject mode: one BatchGetItem per new recipient at RCPT TO (address + domain), none at
    // delivery (the dispatcher's check is answered by the same cache), none for repeated recipients.
    const client = relayClient(relay.smtpPort, 1);
    cleanups.push(async () => client.close());
    const rcpts = (i: number) => [`r${i}@one.example`, `s${i}@two.example`, `t${i}@three.example`];
    db.resetRequests();
    for (let i = 0; i < 5; i++) await client.sendMail(numberedMessage(`rj-${i}`, rcpts(i)));
    await ses.waitFor(6, 15_000);
    assert.equal(db.requests('BatchGetItem'), 15, '3 new recipients per message: 3 requests per message');
    for (let i = 0; i < 5; i++) await client.sendMail(numberedMessage(`rj-again-${i}`, rcpts(i)));
    await ses.waitFor(11, 15_000);
    assert.equal(db.requests('BatchGetItem'), 15, 'repeated recipients: no request');
    assert.equal(db.requests(), 15);
  });

  test('DynamoDB stopped mid-run: nothing sent to suppressed addresses, nothing lost', async () => {
    const ses = await startSes();
    const relay = await relayWith(ses, { BLOCKLIST_ACTION: 'drop' });
    const client = relayClient(relay.smtpPort, 2);
    cleanups.push(async () => client.close());

    const batch = (prefix: string) =>
      Array.from({ length: 5 }, (_, i) =>
        numberedMessage(`${prefix}-${i}`, [
          `${prefix}${i}@example.net`,
          `x${prefix}${i}@blocked.example`,
          'bounced@example.com',
        ]),
      );
    for (const msg of batch('before')) await client.sendMail(msg);
    await ses.waitFor(5, 15_000);

    await db.stop();
    let restarted = false;
    try {
      const acks = [];
      for (const msg of batch('during')) acks.push(await client.sendMail(msg));
      assert.ok(
        acks.every((a) => /^250 /.test(a.response)),
        'drop mode still accepts (durably) while DynamoDB is down',
      );
      await relay.waitForLog(
        (l) => l.event === 'message:deferred' && String(l.reason).includes('policy-unavailable'),
      );
      const ready = (await (await fetch(`http://127.0.0.1:${relay.metricsPort}/readyz`)).json()) as {
        checks: Record<string, string>;
      };
      assert.equal(ready.checks.suppressionList, 'degraded');
      assert.equal(metricValue(await relay.metrics(), 'ses_relay_suppression_available'), 0);
      assert.equal(ses.messages.length, 5, 'nothing sent while the list cannot be consulted');
      await db.start();
      restarted = true;
    } finally {
      if (!restarted) await db.start();
    }

    await ses.waitFor(10, 30_000);
    const markers = ses.messages.map((m) => markerOf(m.body)).sort();
    assert.deepEqual(markers, [...batch('before'), ...batch('during')].map((m) => m.subject).sort());
    const recipients = sentTo(ses);
    assert.equal(new Set(recipients).size, recipients.length, 'each delivered once');
    assert.ok(!recipients.some((r) => /bounced|blocked/.test(r)), 'no suppressed address reached SES');
    assert.equal(recipients.length, 10);
    const ready = (await (await fetch(`http://127.0.0.1:${relay.metricsPort}/readyz`)).json()) as {
      checks: Record<string, string>;
    };
    assert.equal(ready.checks.suppressionList, 'ok');
  });
});

describe('API-key AUTH through SMTP', () => {
  test('accepted, refused, and From-domain restriction', async () => {
    const ses = await startSes();
    const relay = await relayWith(ses, {
      USE_BLOCKLIST: 'false',
      USE_APIKEY: 'true',
      DYNAMODB_API_KEYS_TABLE: KEYS_TABLE,
      SMTP_ALLOW_INSECURE_AUTH: 'true',
    });
    const send = async (pass: string, from: string, marker: string) => {
      const t = nodemailer.createTransport({
        host: '127.0.0.1',
        port: relay.smtpPort,
        secure: false,
        ignoreTLS: true,
        auth: { user: 'any-label', pass },
      });
      try {
        return await t.sendMail({ ...numberedMessage(marker, ['to@example.net']), from });
      } finally {
        t.close();
      }
    };

    assert.match((await send('key-open', 'me@anywhere.example', 'open')).response, /^250 /);
    await assert.rejects(
      send('not-a-key', 'me@anywhere.example', 'bad'),
      (err: Error & { responseCode?: number }) => {
        assert.equal(err.responseCode, 535);
        return true;
      },
    );
    await assert.rejects(
      send('key-restricted', 'me@other.example', 'wrong-domain'),
      (err: Error & { response?: string }) => {
        assert.match(err.response ?? '', /^553 5\.7\.1 /);
        return true;
      },
    );
    assert.match((await send('key-restricted', 'me@Allowed.example', 'right-domain')).response, /^250 /);
    await ses.waitFor(2, 15_000);
    assert.deepEqual(ses.messages.map((m) => markerOf(m.body)).sort(), ['open', 'right-domain']);
  });
});
