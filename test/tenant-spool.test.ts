/**
 * The tenant in the spool (issue 11): stored with each message (store, storeGroup), restored on lease,
 * shown by `queue show`; a spool of schema version 3 (no tenants) migrated in place, its messages the
 * trusted-networks tenant's; and a delivery status notification stored with the tenant of the message it
 * reports on (the notifier through the real spool), so a bulk sender's bounces take the bulk share.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { Notifier } from '../src/notifications/notifier';
import { silentLogger } from '../src/observability/logger';
import { SCHEMA_VERSION } from '../src/spool/spool-schema';
import { SqliteSpool } from '../src/spool/sqlite-spool';
import type { Tenant } from '../src/types';
import { waitUntil } from './helpers/egress-harness';

const ROOT = path.join(__dirname, '..');
const CLI = path.join(ROOT, 'src', 'cli', 'queue.ts');
const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
const tempDir = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tenant-spool-'));
  dirs.push(d);
  return d;
};
const body = () => Readable.from([Buffer.from('Subject: hi\r\nFrom: app@example.com\r\n\r\nhello\r\n')]);
const BULK: Tenant = {
  name: 'newsletter',
  priority: 'bulk',
  rateLimit: 20,
  configurationSet: 'news-events',
  tags: { list: 'weekly' },
};

describe('the tenant in the spool', () => {
  test('stored with the message, restored on lease, shown by queue show', async () => {
    const dir = tempDir();
    const spool = await SqliteSpool.open({ dir, logger: silentLogger });
    let id: string;
    try {
      id = await spool.store({ mailFrom: 'app@example.com', recipients: ['a@example.com'] }, body(), {
        clientAddress: '127.0.0.1',
        authUser: 'newsletter',
        tenant: BULK,
      });
      const [m] = spool.lease(1);
      assert.equal(m.id, id);
      assert.deepEqual(m.reception.tenant, BULK);
      spool.release(m.id);
    } finally {
      await spool.close();
    }
    const db = new Database(path.join(dir, 'spool.db'), { readonly: true });
    const row = db.prepare(`SELECT tenant, tenant_weight FROM messages WHERE id = ?`).get(id) as {
      tenant: string;
      tenant_weight: number;
    };
    db.close();
    assert.deepEqual(row, { tenant: 'newsletter', tenant_weight: 1 });
    const out = await promisify(execFile)(process.execPath, ['--import', 'tsx', CLI, 'show', id], {
      cwd: ROOT,
      env: { ...process.env, SPOOL_DIR: dir },
    });
    assert.match(
      out.stdout,
      /^tenant: +newsletter \(priority bulk, rate limit 20\/s, configuration set news-events, tags list=weekly\)$/m,
    );
  });

  test('a version-3 spool is migrated in place: its mail is the trusted-networks tenant', async () => {
    const dir = tempDir();
    const spool = await SqliteSpool.open({ dir, logger: silentLogger });
    const ids: string[] = [];
    for (const r of ['a@example.com', 'b@example.com']) {
      ids.push(
        await spool.store({ mailFrom: 'app@example.com', recipients: [r] }, body(), {
          clientAddress: '10.0.0.1',
        }),
      );
    }
    await spool.close();
    // Back to version 3 as that release wrote it: no tenant columns, no tenant index.
    const db = new Database(path.join(dir, 'spool.db'));
    db.exec(`DROP INDEX messages_tenant_due;
      ALTER TABLE messages DROP COLUMN tenant;
      ALTER TABLE messages DROP COLUMN tenant_weight;
      PRAGMA user_version = 3;`);
    db.close();

    const again = await SqliteSpool.open({ dir, logger: silentLogger });
    try {
      const check = new Database(path.join(dir, 'spool.db'), { readonly: true });
      assert.equal(check.pragma('user_version', { simple: true }), SCHEMA_VERSION);
      assert.equal(SCHEMA_VERSION, 4);
      assert.deepEqual(check.prepare(`SELECT DISTINCT tenant, tenant_weight FROM messages`).all(), [
        { tenant: 'trusted-networks', tenant_weight: 4 },
      ]);
      assert.ok(check.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'messages_tenant_due'`).get());
      check.close();
      const leased = again.lease(10);
      assert.deepEqual(
        leased.map((m) => m.id),
        ids,
        'every message kept, oldest first',
      );
      assert.ok(
        leased.every((m) => m.reception.tenant === undefined),
        'old rows: no tenant',
      );
      // New mail after the migration has its tenant, and takes its fair share at once.
      const fresh = await again.store({ mailFrom: 'n@example.com', recipients: ['c@example.com'] }, body(), {
        clientAddress: '127.0.0.1',
        tenant: BULK,
      });
      const [m] = again.lease(10);
      assert.equal(m.id, fresh);
      assert.deepEqual(m.reception.tenant, BULK);
    } finally {
      await again.close();
    }
  });

  test('a notification is stored with the tenant of the message it reports on', async () => {
    const dir = tempDir();
    const bounceFrom = 'mailer-daemon@relay.example';
    const spool = await SqliteSpool.open({
      dir,
      logger: silentLogger,
      notifications: { bounceFrom, delayWarningMs: 0, maxQueueAgeMs: 86_400_000 },
    });
    const notifier = new Notifier({
      spool,
      settings: { from: `Mail Delivery System <${bounceFrom}>`, bounceFrom, reportingMta: 'relay.test' },
      logger: silentLogger,
      pollMs: 10,
    });
    try {
      const id = await spool.store(
        { mailFrom: 'app@example.com', recipients: ['gone@example.com'] },
        body(),
        {
          clientAddress: '127.0.0.1',
          tenant: BULK,
        },
      );
      const [m] = spool.lease(1);
      assert.equal(m.id, id);
      await spool.settle(id, [
        {
          recipient: 'gone@example.com',
          status: 'failed',
          reply: '550 5.1.1 Mailbox unavailable',
          code: 550,
        },
      ]);
      assert.deepEqual(spool.pendingNotifications()[0]?.tenant, BULK, 'owed with the tenant');
      notifier.start();
      await waitUntil(() => spool.counts().queued === 1, 10_000, 'the notification to be stored');
      const [n] = spool.lease(1);
      assert.equal(n.reception.notification, 'failure');
      assert.equal(n.reception.notificationFor, id);
      assert.deepEqual(n.reception.tenant, BULK, "the notification takes the bulk tenant's share");
      assert.deepEqual(n.envelope, { mailFrom: bounceFrom, recipients: ['app@example.com'] });
    } finally {
      await notifier.stop();
      await spool.close();
    }
  });
});
