/**
 * Fair shares of the SES rate across tenants (issue 11), end to end over the delivery stage: a real
 * SqliteSpool, the real SMTP transport and the fake SES over loopback, in-process admission. The tests
 * assert ORDER and COUNTS of what reached SES (never wall-clock speed):
 * - a tenant's few messages reach SES ahead of another tenant's 2 000-message bulk backlog, behind at most a
 *   bounded number of the bulk messages (those already in flight);
 * - a tenant at its rate_limit does not hold up another tenant, and stays within its limit;
 * - three tenants of weights 8, 4 and 1 with backlogs share a saturated rate in those proportions;
 * - the lease keeps the ordered-group rule and holds with several tenants.
 * The Redis side (per-tenant rate_limit shared by replicas) is in test/tenant-redis.test.ts.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { silentLogger } from '../src/observability/logger';
import Database from 'better-sqlite3';
import { LEASABLE_TENANTS_SQL, TENANT_LEASE_SQL } from '../src/spool/spool-schema';
import { SqliteSpool } from '../src/spool/sqlite-spool';
import type { ReceivedMessage } from './helpers/fake-ses';
import { messageBody, startEgress, type EgressHarness } from './helpers/egress-harness';
import type { Tenant } from '../src/types';

const BULK: Tenant = { name: 'newsletter', priority: 'bulk' };
const SHOP: Tenant = { name: 'shop', priority: 'normal' };

let h: EgressHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const tenantOf = (m: ReceivedMessage) => /^X-Tenant: (\S+)\r?$/m.exec(m.body.toString('latin1'))?.[1];

/** `count` single-recipient messages of `tenant`, stored concurrently in batches (group commits). */
async function storeMany(harness: EgressHarness, tenant: Tenant, count: number, from = 0): Promise<void> {
  for (let i = 0; i < count; i += 200) {
    const batch = Array.from({ length: Math.min(200, count - i) }, (_, j) => {
      const n = from + i + j;
      const body = `X-Tenant: ${tenant.name}\r\n${messageBody(`${tenant.name}-${n}`)}`;
      return harness.store([`${tenant.name}-${n}@example.com`], { body, tenant });
    });
    await Promise.all(batch);
  }
}

describe('fair shares across tenants', () => {
  test(
    "a tenant's messages reach SES ahead of another tenant's 2 000-message bulk backlog",
    { timeout: 60_000 },
    async () => {
      h = await startEgress({ rate: 100, burst: 10, poolSize: 2, paused: true });
      await storeMany(h, BULK, 2000);
      h.dispatcher.start();
      await h.ses.waitFor(50, 20_000);
      const bulkBefore = h.ses.messages.length;
      await storeMany(h, SHOP, 5);
      await h.ses.waitFor((ms) => ms.filter((m) => tenantOf(m) === 'shop').length === 5, 20_000);
      const shopAt = h.ses.messages.map((m, i) => (tenantOf(m) === 'shop' ? i : -1)).filter((i) => i >= 0);
      const lastShop = shopAt[shopAt.length - 1];
      // Bulk messages SES accepted from the moment the shop's were being stored to the shop's last one.
      const bulkAhead = h.ses.messages
        .slice(bulkBefore, lastShop)
        .filter((m) => tenantOf(m) === 'newsletter').length;
      // With one first-come queue the shop's mail would wait behind ~1 950 bulk messages. Fair: behind what
      // was already leased or in flight when it arrived (poolSize * 2 = 4 messages) and about one bulk
      // transaction per shop message (weights 4:1), plus the few accepted while the 5 stores committed.
      assert.ok(bulkAhead <= 15, `${bulkAhead} bulk messages reached SES before the shop's last one`);
      const bulkDelivered = h.ses.messages.filter((m) => tenantOf(m) === 'newsletter').length;
      assert.ok(bulkDelivered < 500, 'the bulk backlog was still waiting: the shop did not just come last');
      assert.equal(h.ses.recipientsReceived(), new Set(h.ses.messages.flatMap((m) => m.recipients)).size);
    },
  );

  test('a tenant at its rate_limit does not hold up another tenant', { timeout: 60_000 }, async () => {
    const limited: Tenant = { name: 'limited', priority: 'high', rateLimit: 2 };
    const other: Tenant = { name: 'other', priority: 'bulk' };
    h = await startEgress({ rate: 100, burst: 10, poolSize: 2, paused: true });
    await storeMany(h, limited, 30);
    await storeMany(h, other, 40);
    h.dispatcher.start();
    await h.ses.waitFor((ms) => ms.filter((m) => tenantOf(m) === 'other').length === 40, 30_000);
    const limitedAt = h.ses.messages.filter((m) => tenantOf(m) === 'limited').map((m) => m.at);
    const otherAt = h.ses.messages.filter((m) => tenantOf(m) === 'other').map((m) => m.at);
    // Stored first and high priority, yet limited to 2/s: its bucket (2 deep) and then 2 per second.
    const span = (otherAt[otherAt.length - 1] - Math.min(...limitedAt, ...otherAt)) / 1000;
    assert.ok(limitedAt.length < 30, 'the limited tenant was still waiting when the other had finished');
    assert.ok(
      limitedAt.length <= 2 * span + 2 + 1,
      `${limitedAt.length} recipients of the limited tenant in ${span.toFixed(2)} s (limit 2/s, bucket 2)`,
    );
    // The window of its own bucket holds over any stretch of its deliveries too.
    for (let i = 0; i < limitedAt.length; i++) {
      for (let j = i; j < limitedAt.length; j++) {
        const w = (limitedAt[j] - limitedAt[i]) / 1000;
        assert.ok(j - i + 1 <= 2 * w + 2 + 1, `${j - i + 1} limited recipients within ${w.toFixed(2)} s`);
      }
    }
  });

  test('weights 8:4:1 share a saturated rate in proportion', { timeout: 90_000 }, async () => {
    const tenants: Tenant[] = [
      { name: 'alerts', priority: 'high' },
      { name: 'shop', priority: 'normal' },
      { name: 'newsletter', priority: 'bulk' },
    ];
    h = await startEgress({ rate: 150, burst: 10, poolSize: 2, paused: true });
    for (const t of tenants) await storeMany(h, t, 300);
    h.dispatcher.start();
    await h.ses.waitFor(300, 30_000);
    // A window in the steady state: every tenant still has a backlog (the high one gets 8/13 of 260 = 160).
    const window = h.ses.messages.slice(40, 300);
    const share = (name: string) => window.filter((m) => tenantOf(m) === name).length / window.length;
    const expected = { alerts: 8 / 13, shop: 4 / 13, newsletter: 1 / 13 };
    for (const [name, want] of Object.entries(expected)) {
      const got = share(name);
      assert.ok(
        Math.abs(got - want) <= 0.07,
        `${name}: share ${got.toFixed(3)}, expected ${want.toFixed(3)}`,
      );
    }
  });
});

describe('the fair lease keeps ordered groups and holds', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  const body = () => Readable.from([Buffer.from('Subject: x\r\n\r\nx\r\n')]);

  test('a group member waits for its predecessor; a held message is never leased', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tenant-lease-'));
    const spool = await SqliteSpool.open({ dir, logger: silentLogger });
    try {
      const responder: Tenant = { name: 'autoresponder', priority: 'high' };
      const [first, second] = await spool.storeGroup([
        {
          envelope: { mailFrom: 'r@example.com', recipients: ['a@example.com'] },
          body: body(),
          reception: { clientAddress: 'local', tenant: responder },
        },
        {
          envelope: { mailFrom: 'r@example.com', recipients: ['b@example.com'] },
          body: body(),
          reception: { clientAddress: 'local', tenant: responder },
        },
      ]);
      const bulkIds: string[] = [];
      for (let i = 0; i < 5; i++) {
        bulkIds.push(
          await spool.store({ mailFrom: 'n@example.com', recipients: [`n${i}@example.com`] }, body(), {
            clientAddress: '127.0.0.1',
            tenant: BULK,
          }),
        );
      }
      const plain = await spool.store({ mailFrom: 'p@example.com', recipients: ['p@example.com'] }, body(), {
        clientAddress: '127.0.0.1',
      });
      const held = await spool.act({ action: 'hold', ids: [bulkIds[0]] });
      assert.deepEqual(held.changed, [bulkIds[0]]);

      const leased = spool.lease(100);
      const ids = leased.map((m) => m.id);
      assert.ok(ids.includes(first), 'the group head is leased');
      assert.ok(!ids.includes(second), 'its successor waits for it');
      assert.ok(!ids.includes(bulkIds[0]), 'a held message is not leased');
      assert.deepEqual(new Set(ids), new Set([first, plain, ...bulkIds.slice(1)]));
      assert.equal(new Set(ids).size, ids.length, 'each message once');
      // Fair order: the first three leases are one of each tenant.
      assert.deepEqual(
        new Set(leased.slice(0, 3).map((m) => m.reception.tenant?.name ?? 'trusted-networks')),
        new Set(['autoresponder', 'newsletter', 'trusted-networks']),
      );
      // Within a tenant, oldest due first.
      const bulkLeased = ids.filter((id) => bulkIds.includes(id));
      assert.deepEqual(bulkLeased, bulkIds.slice(1));
      assert.deepEqual(
        leased.find((m) => m.id === first)?.reception.tenant,
        responder,
        'the tenant is restored on lease',
      );
      assert.equal(leased.find((m) => m.id === plain)?.reception.tenant, undefined);
      assert.deepEqual(spool.lease(100), [], 'nothing is leased twice');

      await spool.settle(first, [{ recipient: 'a@example.com', status: 'delivered', reply: '250 ok' }]);
      assert.deepEqual(
        spool.lease(100).map((m) => m.id),
        [second],
        'the successor is due once its predecessor is delivered',
      );
      await spool.act({ action: 'release', ids: [bulkIds[0]] });
      assert.deepEqual(
        spool.lease(100).map((m) => m.id),
        [bulkIds[0]],
      );
    } finally {
      await spool.close();
    }
  });

  test("the fair lease's queries use the tenant index (EXPLAIN QUERY PLAN): no scan of the backlog", async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tenant-lease-'));
    const spool = await SqliteSpool.open({ dir, logger: silentLogger });
    await spool.close();
    const db = new Database(path.join(dir, 'spool.db'), { readonly: true });
    try {
      const plan = (sql: string, params: object) =>
        (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(params) as Array<{ detail: string }>)
          .map((r) => r.detail)
          .join('; ');
      const page = plan(TENANT_LEASE_SQL, { tenant: 'a', now: 1, afterDue: -1, afterSeq: -1, limit: 8 });
      assert.match(page, /SEARCH messages USING INDEX messages_tenant_due \(tenant=\?/, page);
      assert.doesNotMatch(page, /TEMP B-TREE|SCAN messages/, page);
      const tenants = plan(LEASABLE_TENANTS_SQL, {});
      assert.match(tenants, /messages_tenant_due/, tenants);
      assert.doesNotMatch(tenants, /SCAN messages|TEMP B-TREE/, tenants);
    } finally {
      db.close();
    }
  });

  test(
    'the lease stays fair and exact over a 20 000-message backlog of one tenant',
    { timeout: 60_000 },
    async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tenant-lease-'));
      const spool = await SqliteSpool.open({ dir, logger: silentLogger });
      try {
        for (let i = 0; i < 20_000; i += 500) {
          await Promise.all(
            Array.from({ length: 500 }, (_, j) =>
              spool.store({ mailFrom: 'n@example.com', recipients: [`n${i + j}@example.com`] }, body(), {
                clientAddress: '127.0.0.1',
                tenant: BULK,
              }),
            ),
          );
        }
        const single = await spool.store(
          { mailFrom: 's@example.com', recipients: ['s@example.com'] },
          body(),
          {
            clientAddress: '127.0.0.1',
            tenant: SHOP,
          },
        );
        const first = spool.lease(8);
        assert.equal(first.length, 8);
        assert.ok(
          first.slice(0, 2).some((m) => m.id === single),
          'the single message is among the first two',
        );
        // Many small leases with settles in between: each message once, in order within the bulk tenant.
        const seen = new Set(first.map((m) => m.id));
        let last = '';
        for (const m of first) if (m.id !== single) last = m.envelope.recipients[0];
        for (let round = 0; round < 200; round++) {
          for (const m of spool.lease(4)) {
            assert.ok(!seen.has(m.id));
            seen.add(m.id);
            const n = Number(/^n(\d+)@/.exec(m.envelope.recipients[0])?.[1]);
            assert.ok(n > Number(/^n(\d+)@/.exec(last)?.[1] ?? -1), 'oldest due first within the tenant');
            last = m.envelope.recipients[0];
            await spool.settle(m.id, [
              { recipient: m.envelope.recipients[0], status: 'delivered', reply: '250' },
            ]);
          }
        }
        assert.equal(seen.size, 8 + 800);
      } finally {
        await spool.close();
      }
    },
  );
});
