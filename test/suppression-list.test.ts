import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../src/observability/logger';
import { registry } from '../src/observability/metrics';
import { asciiDomain, domainKey, normalizeAddress, suppressionKeys } from '../src/policy/address';
import { checkAddress } from '../src/ingress/address-syntax';
import { classifyNotification } from '../lambda/src/ses-notification';
import { createDynamoDbClient } from '../src/policy/dynamodb-client';
import { PolicyUnavailableError } from '../src/policy/policy';
import { SuppressionList } from '../src/policy/suppression-list';
import { startDynalite, TEST_CREDENTIALS, TEST_REGION, type Dynalite } from './helpers/dynalite';

const TABLE = 'suppression-test';

/**
 * A DynamoDB that processes only part of each BatchGetItem, like a throttled table: an HTTP proxy in front of
 * dynalite forwards the first `processed(n)` keys and returns the rest as UnprocessedKeys.
 */
async function startPartialProxy(target: string, processed: (requested: number) => number) {
  let batchRequests = 0;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      const op = String(req.headers['x-amz-target'] ?? '');
      let body = Buffer.concat(chunks).toString('utf8');
      const unprocessed: Record<string, { Keys: unknown[] }> = {};
      let forwardedKeys = -1; // -1: not a BatchGetItem, forward as is
      if (op.endsWith('.BatchGetItem')) {
        batchRequests++;
        forwardedKeys = 0;
        const parsed = JSON.parse(body) as { RequestItems: Record<string, { Keys: unknown[] }> };
        for (const [table, spec] of Object.entries(parsed.RequestItems)) {
          const n = processed(spec.Keys.length);
          if (n < spec.Keys.length) unprocessed[table] = { ...spec, Keys: spec.Keys.slice(n) };
          spec.Keys = spec.Keys.slice(0, n);
          if (n === 0) delete parsed.RequestItems[table];
          forwardedKeys += n;
        }
        body = JSON.stringify(parsed);
      }
      let out: Record<string, unknown> = { Responses: {} };
      if (forwardedKeys !== 0) {
        const upstream = await fetch(target, {
          method: 'POST',
          // The original signature headers; dynalite checks their presence, not the (now stale) signature.
          headers: Object.fromEntries(
            Object.entries(req.headers)
              .filter(([k]) => !['content-length', 'host', 'connection'].includes(k))
              .map(([k, v]) => [k, String(v)]),
          ),
          body,
        });
        out = (await upstream.json()) as Record<string, unknown>;
      }
      if (Object.keys(unprocessed).length > 0) out.UnprocessedKeys = unprocessed;
      const text = JSON.stringify(out);
      res.writeHead(200, {
        'content-type': 'application/x-amz-json-1.0',
        'content-length': Buffer.byteLength(text),
      });
      res.end(text);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    batchRequests: () => batchRequests,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

async function metric(name: string): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  return (m?.values ?? []).reduce((sum, v) => sum + Number(v.value), 0);
}

describe('address normalisation', () => {
  test('lowercases, trims and strips display names', () => {
    assert.equal(normalizeAddress('  Jane.Doe@Example.COM '), 'jane.doe@example.com');
    assert.equal(normalizeAddress('"Jane" <Jane@Example.com>'), 'jane@example.com');
    assert.equal(normalizeAddress('<X@Y.org>'), 'x@y.org');
    assert.deepEqual(suppressionKeys('A@B.C'), ['a@b.c', '@b.c']);
    assert.deepEqual(suppressionKeys('@Example.com'), ['@example.com']);
    assert.deepEqual(suppressionKeys('postmaster'), ['postmaster']);
    assert.deepEqual(suppressionKeys('  '), []);
  });

  test('one canonical key: quotes and quoted-pairs resolved, case folded, domain in A-labels', () => {
    const spellings = [
      'victim@example.com',
      'VICTIM@Example.COM',
      '"victim"@example.com',
      '"Vic\\tim"@EXAMPLE.com',
      'Victim <"victim"@example.com>',
      'victim@ｅxample.com',
      'victim@exa\u00admple.com',
    ];
    for (const s of spellings) {
      assert.equal(normalizeAddress(s), 'victim@example.com', s);
      assert.deepEqual(suppressionKeys(s), ['victim@example.com', '@example.com'], s);
    }
    for (const s of ['a@Bücher.example', 'A@XN--BCHER-KVA.example', '"a"@xn--bcher-kva.example']) {
      assert.deepEqual(suppressionKeys(s), ['a@xn--bcher-kva.example', '@xn--bcher-kva.example'], s);
    }
    assert.deepEqual(suppressionKeys('@Bücher.Example'), ['@xn--bcher-kva.example']);
    assert.equal(domainKey('Bücher.example'), '@xn--bcher-kva.example');
    assert.equal(asciiDomain('ex%41mple.com'), '', 'no percent-decoding');
    assert.equal(asciiDomain('0x7f.1'), '', 'no IPv4 parsing');
    assert.equal(asciiDomain('example.com.'), '', 'no trailing dot');
    assert.equal(asciiDomain('[192.0.2.1]'), '');
  });

  test('the relay accepts an address with exactly the key the Lambda and the CLI compute', () => {
    for (const s of ['"Victim"@Bücher.example', 'Jane.Doe+x@Example.net', '".dot"@example.org']) {
      const c = checkAddress(s, 'recipient');
      assert.ok(c.ok, s);
      assert.equal(c.key, normalizeAddress(s), s);
      assert.equal(suppressionKeys(c.address)[0], c.key, s);
      // The Lambda writes what SES reports (the address as sent, or with a display name).
      const bounce = {
        notificationType: 'Bounce',
        bounce: {
          bounceType: 'Permanent',
          feedbackId: 'f1',
          bouncedRecipients: [{ emailAddress: c.address }, { emailAddress: `Someone <${c.address}>` }],
        },
        mail: { messageId: 'm1' },
      };
      const classified = classifyNotification(JSON.stringify(bounce), 'sns-1');
      assert.equal(classified.action, 'suppress');
      assert.deepEqual(
        classified.action === 'suppress' ? classified.entries.map((e) => e.email) : [],
        [c.key],
        s,
      );
    }
  });
});

describe('SuppressionList against dynalite', () => {
  let db: Dynalite;
  const lists: SuppressionList[] = [];
  const make = (
    cacheTtlMs = 60_000,
    extra: Partial<ConstructorParameters<typeof SuppressionList>[0]> = {},
  ) => {
    const list = new SuppressionList({
      client: db.client(),
      table: TABLE,
      cacheTtlMs,
      cacheMax: 10_000,
      logger: silentLogger,
      recoveryProbeMs: 0,
      ...extra,
    });
    lists.push(list);
    return list;
  };

  before(async () => {
    db = await startDynalite();
    await db.createTable(TABLE);
    await db.put(TABLE, { email: { S: 'bounced@example.com' }, reason: { S: 'bounce' } });
    await db.put(TABLE, { email: { S: 'complained@example.org' }, reason: { S: 'complaint' } });
    await db.put(TABLE, { email: { S: '@blocked.example' } });
  });
  after(async () => {
    for (const l of lists) await l.close();
    await db.close();
  });

  test('createDynamoDbClient returns an injected client and builds one from explicit options', async () => {
    const injected = db.client();
    assert.equal(createDynamoDbClient({ client: injected }), injected);
    const own = createDynamoDbClient({
      endpoint: db.endpoint,
      region: TEST_REGION,
      credentials: TEST_CREDENTIALS,
    });
    const list = new SuppressionList({
      client: own,
      table: TABLE,
      cacheTtlMs: 0,
      cacheMax: 1,
      logger: silentLogger,
    });
    const d = await list.check(['bounced@example.com']);
    assert.equal(d.suppressed.length, 1);
    await list.close();
    own.destroy();
  });

  test('suppressed, unsuppressed, mixed case and domain entries', async () => {
    const list = make();
    const d = await list.check([
      'ok@example.com',
      'Bounced@Example.COM',
      'COMPLAINED@example.org',
      'anyone@Blocked.Example',
      'other@example.org',
    ]);
    assert.deepEqual(d.allowed, ['ok@example.com', 'other@example.org']);
    assert.deepEqual(d.suppressed, [
      { recipient: 'Bounced@Example.COM', matched: 'bounced@example.com', reason: 'bounce' },
      { recipient: 'COMPLAINED@example.org', matched: 'complained@example.org', reason: 'complaint' },
      { recipient: 'anyone@Blocked.Example', matched: '@blocked.example' },
    ]);
    assert.equal(list.healthy(), true);
  });

  test('one BatchGetItem per check; none when every key is cached', async () => {
    const list = make();
    const lookupsBefore = await metric('ses_relay_suppression_lookups_total');
    const hitsBefore = await metric('ses_relay_suppression_cache_hits_total');
    db.resetRequests();
    const message = ['a@example.com', 'b@example.com', 'C@other.example', 'bounced@example.com'];
    await list.check(message);
    assert.equal(db.requests('BatchGetItem'), 1, 'first message: one request for 4 recipients + 2 domains');
    assert.equal(db.requests(), 1, 'and nothing else');
    await list.check(message);
    await list.check(['A@EXAMPLE.COM']);
    assert.equal(db.requests(), 1, 'repeated recipients cost no request');
    await list.check(['new@example.com', 'b@example.com']);
    assert.equal(db.requests('BatchGetItem'), 2, 'only the unseen address is looked up');
    assert.equal((await metric('ses_relay_suppression_lookups_total')) - lookupsBefore, 2);
    assert.ok((await metric('ses_relay_suppression_cache_hits_total')) - hitsBefore >= 6 + 2 + 2);
  });

  test('without cache: still one BatchGetItem per message', async () => {
    const list = make(0);
    db.resetRequests();
    for (let i = 0; i < 5; i++) await list.check(['x@example.com', 'y@example.net', 'bounced@example.com']);
    assert.equal(db.requests('BatchGetItem'), 5);
    assert.equal(db.requests(), 5);
  });

  test('more than 100 keys are split into chunks of at most 100', async () => {
    const list = make();
    const recipients = Array.from({ length: 120 }, (_, i) => `user${i}@chunk.example`);
    recipients.push('bounced@example.com', 'x@blocked.example');
    db.resetRequests();
    // 122 addresses + 3 domains = 125 keys -> 2 requests.
    const d = await list.check(recipients);
    assert.equal(db.requests('BatchGetItem'), 2);
    assert.equal(d.allowed.length, 120);
    assert.deepEqual(
      d.suppressed.map((s) => s.recipient),
      ['bounced@example.com', 'x@blocked.example'],
    );
  });

  test('cache answers expire after the TTL (newly suppressed addresses are honoured)', async () => {
    const list = make(150);
    assert.equal((await list.check(['late@example.com'])).allowed.length, 1);
    await db.put(TABLE, { email: { S: 'late@example.com' }, reason: { S: 'bounce' } });
    db.resetRequests();
    assert.equal((await list.check(['late@example.com'])).allowed.length, 1, 'cached miss');
    assert.equal(db.requests(), 0);
    await new Promise((r) => setTimeout(r, 250));
    const d = await list.check(['late@example.com']);
    assert.equal(d.suppressed.length, 1, 'looked up again after the TTL');
    assert.equal(db.requests('BatchGetItem'), 1);
  });

  test('DynamoDB stopped: PolicyUnavailableError, healthy() false, cached answers still served; recovery', async () => {
    const list = make(60_000, { recoveryProbeMs: 100 });
    await list.check(['cached@example.com']);
    const errorsBefore = await metric('ses_relay_suppression_errors_total');
    await db.stop();
    try {
      await assert.rejects(list.check(['fresh@example.com']), PolicyUnavailableError);
      assert.equal(list.healthy(), false);
      assert.equal(await metric('ses_relay_suppression_available'), 0);
      assert.equal((await metric('ses_relay_suppression_errors_total')) - errorsBefore, 1);
      // Answers decided before the outage are still valid within their TTL.
      assert.deepEqual((await list.check(['cached@example.com'])).allowed, ['cached@example.com']);
      await assert.rejects(list.check(['cached@example.com', 'bounced@example.com']), PolicyUnavailableError);
    } finally {
      await db.start();
    }
    // The recovery probe notices without traffic (bounded wait).
    const deadline = Date.now() + 5_000;
    while (!list.healthy() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(list.healthy(), true);
    assert.equal(await metric('ses_relay_suppression_available'), 1);
    const d = await list.check(['fresh@example.com', 'Bounced@example.com']);
    assert.deepEqual(d.allowed, ['fresh@example.com']);
    assert.equal(d.suppressed.length, 1);
  });

  test('a missing table is an unavailable policy, not a crash', async () => {
    const list = new SuppressionList({
      client: db.client(),
      table: 'no-such-table',
      cacheTtlMs: 0,
      cacheMax: 1,
      logger: silentLogger,
      recoveryProbeMs: 0,
    });
    lists.push(list);
    await assert.rejects(list.check(['a@example.com']), PolicyUnavailableError);
    assert.equal(list.healthy(), false);
  });

  test('UnprocessedKeys are retried until every key is answered', async () => {
    // Half of the keys of each request processed (rounded up): 4 keys -> 2, 1, 1.
    const proxy = await startPartialProxy(db.endpoint, (n) => Math.ceil(n / 2));
    const client = new DynamoDBClient({
      endpoint: proxy.endpoint,
      region: TEST_REGION,
      credentials: TEST_CREDENTIALS,
    });
    const list = make(0, { client, unprocessedBackoffMs: 1 });
    try {
      const d = await list.check(['ok@example.com', 'Bounced@example.com', 'x@blocked.example']);
      assert.deepEqual(d.allowed, ['ok@example.com']);
      assert.deepEqual(
        d.suppressed.map((x) => x.matched),
        ['bounced@example.com', '@blocked.example'],
      );
      assert.equal(proxy.batchRequests(), 3);
      assert.equal(list.healthy(), true);
    } finally {
      client.destroy();
      await proxy.close();
    }
  });

  test('keys still unprocessed after the bounded retries: PolicyUnavailableError', async () => {
    const proxy = await startPartialProxy(db.endpoint, () => 0);
    const client = new DynamoDBClient({
      endpoint: proxy.endpoint,
      region: TEST_REGION,
      credentials: TEST_CREDENTIALS,
    });
    const list = make(0, { client, unprocessedBackoffMs: 1, maxUnprocessedRetries: 3 });
    try {
      await assert.rejects(list.check(['a@example.com']), PolicyUnavailableError);
      assert.equal(proxy.batchRequests(), 4, 'one request and 3 retries, then give up');
      assert.equal(list.healthy(), false);
    } finally {
      client.destroy();
      await proxy.close();
    }
  });

  test('an address longer than a DynamoDB key cannot be listed and does not fail the batch', async () => {
    const list = make(0);
    const long = `${'x'.repeat(2100)}@example.com`;
    const d = await list.check([long, 'bounced@example.com']);
    assert.deepEqual(d.allowed, [long]);
    assert.equal(d.suppressed.length, 1);
  });

  test('empty recipient list costs nothing', async () => {
    const list = make();
    db.resetRequests();
    assert.deepEqual(await list.check([]), { allowed: [], suppressed: [] });
    assert.equal(db.requests(), 0);
  });
});
