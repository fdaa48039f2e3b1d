/**
 * The shared daily limit in DynamoDB (dynalite): one conditional UpdateItem per request decides limit and
 * resent Message-ID atomically, so concurrent requests never exceed the limit; requesters are stored only as
 * keyed hashes with a TTL. Then two relay processes sharing the table: 10 parallel requests from one address
 * with limit 3 give exactly 3 sets of replies, and a request resent to the other replica gets none.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { ScanCommand } from '@aws-sdk/client-dynamodb';
import { DynamoQuotaStore } from '../src/autoresponder/quota-store';
import { startDynalite, type Dynalite } from './helpers/dynalite';
import { startFakeSes } from './helpers/fake-ses';
import { cleanupAfterAll } from './helpers/cleanup';
import {
  fakeSesEnv,
  freePort,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  type RelayProcess,
} from './helpers/relay-process';
import { autoresponderEnv, requestMessage, sendRequest } from './helpers/autoresponder';

const cleanups = cleanupAfterAll();
const DAY = 24 * 3600_000;
const HASH_KEY = 'test-hash-key-0123456789abcdef';
let db: Dynalite;

before(async () => {
  db = await startDynalite();
  cleanups.push(() => db.close());
  await db.createTable('quota', 'id');
  await db.createTable('quota2', 'id');
});

test('DynamoDB store: limit, resent Message-ID, window, release; keyed hashes with a TTL', async () => {
  const store = new DynamoQuotaStore(db.client(), 'quota', Buffer.from(HASH_KEY), {
    limit: 2,
    windowMs: DAY,
  });
  const now = Date.now();
  const claim = (messageId?: string, at = now) =>
    store.claim({ requester: 'Secret.Person@Example.net', messageId, now: at });
  assert.equal(await claim('<1@x>'), 'granted');
  assert.equal(await claim('<1@x>'), 'already-answered');
  assert.equal(await claim(undefined), 'granted');
  assert.equal(await claim('<2@x>'), 'daily-limit');
  assert.equal(await claim('<1@x>'), 'already-answered');
  await store.release({ requester: 'secret.person@example.net', messageId: '<1@x>', now });
  assert.equal(await claim('<1@x>'), 'granted', 'released: its place and its Message-ID are free again');
  assert.equal(await claim('<3@x>', now + DAY), 'granted', 'the next window');

  const items = (await db.client().send(new ScanCommand({ TableName: 'quota' }))).Items ?? [];
  const dump = JSON.stringify(items);
  assert.ok(!/secret|person|example\.net|<1@x>/i.test(dump), dump);
  for (const item of items) {
    const expires = Number(item.expires_at.N);
    assert.ok(expires * 1000 > now && expires * 1000 <= now + 3 * DAY, 'TTL within the window + an hour');
  }
});

test('DynamoDB store: 20 concurrent claims with limit 3 grant exactly 3', async () => {
  const stores = [1, 2].map(
    () => new DynamoQuotaStore(db.client(), 'quota2', Buffer.from(HASH_KEY), { limit: 3, windowMs: DAY }),
  );
  const now = Date.now();
  const results = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      stores[i % 2].claim({ requester: 'race@example.net', messageId: `<race-${i}@x>`, now }),
    ),
  );
  assert.equal(results.filter((r) => r === 'granted').length, 3);
  assert.equal(results.filter((r) => r === 'daily-limit').length, 17);
});

test('two relays sharing the table: 10 parallel requests from one address, limit 3 → exactly 3 sets of replies', async () => {
  await db.createTable('shared-quota', 'id');
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const config = ['links', 'software'].map((body) => ({
    email_addr: 'get@example.org',
    body,
    attachments: null,
    send_method: 'SES',
  }));
  const ports = [await freePort(), await freePort()];
  const relays: RelayProcess[] = [];
  for (const port of ports) {
    const { env } = autoresponderEnv(config, port, {
      AUTORESPONDER_QUOTA_TABLE: 'shared-quota',
      AUTORESPONDER_HASH_KEY: HASH_KEY,
      AUTORESPONDER_DAILY_LIMIT: '3',
    });
    const relay = await startRelayProcess({ env: { ...fakeSesEnv(ses.port), ...env, ...db.env } });
    cleanups.push(() => stopRelayProcess(relay));
    relays.push(relay);
  }
  const raws = Array.from({ length: 10 }, (_, i) =>
    requestMessage({ from: 'Many@Example.net', messageId: `<many-${i}@example.net>` }),
  );
  const outcomes = await Promise.all(
    raws.map((raw, i) =>
      sendRequest(ports[i % 2], raw, { from: 'many@example.net', to: ['get@example.org'] }),
    ),
  );
  assert.ok(
    outcomes.every((o) => o.ok && o.code === 250),
    JSON.stringify(outcomes),
  );
  await ses.waitFor(6, 20_000);

  // A request answered by one replica, resent to the other: no second set.
  const answered = relays.flatMap((r) =>
    r.logs.filter((l) => l.event === 'autoresponder:request' && l.result === 'answered'),
  );
  assert.equal(answered.length, 3);
  const i = outcomes.findIndex((o) => answered.some((l) => o.response.endsWith(String(l.requestId))));
  const resend = await sendRequest(ports[(i + 1) % 2], raws[i], {
    from: 'many@example.net',
    to: ['get@example.org'],
  });
  assert.ok(resend.ok);

  for (const relay of relays) {
    const deadline = Date.now() + 10_000;
    while (metricValue(await relay.metrics(), 'ses_relay_queue_messages') > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(ses.messages.length, 6, 'exactly 3 sets of 2 replies');
  const total = async (result: string) => {
    let n = 0;
    for (const r of relays)
      n += metricValue(await r.metrics(), 'ses_relay_autoresponder_requests_total', { result });
    return n;
  };
  assert.equal(await total('answered'), 3);
  assert.equal(await total('daily-limit'), 7);
  assert.equal(await total('already-answered'), 1);
  assert.ok(
    !JSON.stringify(relays.map((r) => r.logs.filter((l) => l.event === 'autoresponder:request'))).includes(
      'many@',
    ),
  );
});
