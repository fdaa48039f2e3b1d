/**
 * The spool's side of delivery status notifications and queue actions, in process: what is owed is written
 * in the same commit as the outcome (one row per message and type, joining an attempt's transactions),
 * storeNotification consumes it exactly once, failed messages with an owed notification are not pruned,
 * each queue action is one transaction with the right counters, an attempt in progress is waited for (or
 * reported busy), and a version-2 spool is migrated to version 3 in place.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { silentLogger } from '../src/observability/logger';
import { NotificationNotOwedError, SqliteSpool, type SqliteSpoolOptions } from '../src/spool/sqlite-spool';
import { SCHEMA_VERSION } from '../src/spool/spool-schema';
import type { Envelope } from '../src/types';

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-dsn-test-'));
  tempDirs.push(dir);
  return dir;
}

const POLICY = {
  bounceFrom: 'mailer-daemon@relay.example',
  delayWarningMs: 0,
  maxQueueAgeMs: 5 * 86_400_000,
};
const reception = { clientAddress: '127.0.0.1' };
const body = (subject = 'hi') =>
  Readable.from([Buffer.from(`Subject: ${subject}\r\nFrom: a@example.com\r\n\r\nbody\r\n`)]);

async function openSpool(extra: Partial<SqliteSpoolOptions> = {}, dir = tempDir()) {
  let owed = 0;
  const spool = await SqliteSpool.open({
    dir,
    logger: silentLogger,
    notifications: POLICY,
    onNotificationOwed: () => owed++,
    ...extra,
  });
  after(() => spool.close());
  return { spool, dir, owedCalls: () => owed };
}

function envelope(...recipients: string[]): Envelope {
  return { mailFrom: 'app@example.com', recipients };
}

describe('owed notifications', () => {
  test('the outcomes of one attempt (record + settle) owe ONE notification, composed after the lease ends', async () => {
    const { spool, owedCalls } = await openSpool();
    const id = await spool.store(
      envelope('a@example.net', 'b@example.net', 'c@example.net'),
      body(),
      reception,
    );
    const [m] = spool.lease(1);
    await spool.record(m.id, [
      { recipient: 'a@example.net', status: 'failed', code: 550, reply: '550 5.1.1 no' },
    ]);
    assert.deepEqual(spool.pendingNotifications(), [], 'not composed while the attempt goes on');
    assert.equal(spool.pendingNotificationCount(), 1, 'but owed, durably, with the record');
    const state = await spool.settle(m.id, [
      { recipient: 'b@example.net', status: 'failed', code: 553, reply: '553 5.1.3 bad' },
      { recipient: 'c@example.net', status: 'delivered', code: 250, reply: '250 Ok' },
    ]);
    assert.equal(state, 'failed');
    assert.equal(owedCalls(), 1, 'the notifier is poked once, after the lease ended');
    const [p, ...more] = spool.pendingNotifications();
    assert.equal(more.length, 0);
    assert.equal(p.messageId, id);
    assert.equal(p.type, 'failure');
    assert.deepEqual(
      p.recipients.map((r) => [r.recipient, r.status, r.diagnostic]),
      [
        ['a@example.net', '5.1.1', '550 5.1.1 no'],
        ['b@example.net', '5.1.3', '553 5.1.3 bad'],
      ],
    );
    assert.equal(p.headers.toString(), 'Subject: hi\r\nFrom: a@example.com\r\n');
  });

  test('storeNotification stores the notification and consumes what was owed in one commit: never twice', async () => {
    const { spool } = await openSpool();
    await spool.store(envelope('a@example.net'), body(), reception);
    const [m] = spool.lease(1);
    await spool.settle(m.id, [{ recipient: 'a@example.net', status: 'failed', code: 550, reply: '550 no' }]);
    const [p] = spool.pendingNotifications();
    const message = () => ({
      envelope: { mailFrom: POLICY.bounceFrom, recipients: ['app@example.com'] },
      body: Readable.from([Buffer.from('Subject: bounce\r\n\r\nx\r\n')]),
      reception: { clientAddress: 'local', notification: 'failure' as const, notificationFor: m.id },
    });
    const before = spool.counts().queued;
    const nid = await spool.storeNotification(p.id, message());
    assert.equal(spool.counts().queued, before + 1);
    assert.equal(spool.pendingNotificationCount(), 0);
    await assert.rejects(spool.storeNotification(p.id, message()), NotificationNotOwedError);
    assert.equal(spool.counts().queued, before + 1, 'the second store kept nothing');
    // The notification itself never owes one.
    const [n] = spool.lease(1);
    assert.equal(n.id, nid);
    assert.equal(n.reception.notification, 'failure');
    await spool.settle(n.id, [
      { recipient: 'app@example.com', status: 'failed', code: 550, reply: '550 no' },
    ]);
    assert.equal(spool.pendingNotificationCount(), 0);
  });

  test('a failed message whose notification is owed is not pruned; once composed it is', async () => {
    const { spool } = await openSpool({ failedRetentionMs: 1 });
    // (Owed for longer than a second retention period, nothing composed it: BOUNCE_FROM was unset; then
    // the message goes, and the owed row keeps its headers. Here the retention is 1 ms: kept a little.)
    await spool.store(envelope('a@example.net'), body(), reception);
    const [m] = spool.lease(1);
    await spool.settle(m.id, [{ recipient: 'a@example.net', status: 'failed', code: 550, reply: '550 no' }]);
    await new Promise((r) => setTimeout(r, 5));
    const finishedAt = spool.listFailed()[0].finishedAt;
    assert.equal(await spool.prune(finishedAt + 1.5), 0, 'past retention, kept for the owed notification');
    assert.ok(spool.hasMessage(m.id), 'kept: RET=FULL may return its body');
    const [p] = spool.pendingNotifications();
    await spool.storeNotification(p.id, {
      envelope: { mailFrom: POLICY.bounceFrom, recipients: ['app@example.com'] },
      body: Readable.from([Buffer.from('x\r\n')]),
      reception: { clientAddress: 'local', notification: 'failure', notificationFor: m.id },
    });
    assert.equal(await spool.prune(), 1);
  });

  test('an owed notification nothing composes pins its message for one more retention period only', async () => {
    const { spool } = await openSpool({ failedRetentionMs: 1000 });
    await spool.store(envelope('a@example.net'), body(), reception);
    const [m] = spool.lease(1);
    await spool.settle(m.id, [{ recipient: 'a@example.net', status: 'failed', code: 550, reply: '550 no' }]);
    const finishedAt = spool.listFailed()[0].finishedAt;
    assert.equal(await spool.prune(finishedAt + 1500), 0);
    assert.equal(await spool.prune(finishedAt + 2500), 1);
    assert.equal(spool.pendingNotificationCount(), 1, 'the owed row stays (it carries the headers)');
  });

  test('NOTIFY rules: NEVER none, SUCCESS explicit only, null sender and BOUNCE_FROM never', async () => {
    const { spool } = await openSpool();
    const dsn = {
      recipients: {
        'never@example.net': { notify: ['NEVER' as const] },
        'ok@example.net': { notify: ['SUCCESS' as const], orcpt: 'rfc822;OK@example.net' },
      },
    };
    await spool.store(
      { ...envelope('never@example.net', 'ok@example.net', 'plain@example.net'), dsn },
      body(),
      reception,
    );
    const [m] = spool.lease(1);
    await spool.settle(m.id, [
      { recipient: 'never@example.net', status: 'failed', code: 550, reply: '550 no' },
      { recipient: 'ok@example.net', status: 'delivered', code: 250, reply: '250 Ok' },
      { recipient: 'plain@example.net', status: 'delivered', code: 250, reply: '250 Ok' },
    ]);
    const pending = spool.pendingNotifications();
    assert.deepEqual(
      pending.map((p) => [p.type, p.recipients.map((r) => [r.recipient, r.action, r.orcpt])]),
      [['relayed', [['ok@example.net', 'relayed', 'rfc822;OK@example.net']]]],
    );
    for (const mailFrom of ['', POLICY.bounceFrom.toUpperCase()]) {
      await spool.store({ mailFrom, recipients: ['x@example.net'] }, body(), reception);
      const [n] = spool.lease(1);
      await spool.settle(n.id, [
        { recipient: 'x@example.net', status: 'failed', code: 550, reply: '550 no' },
      ]);
    }
    assert.equal(spool.pendingNotificationCount(), 1, 'nothing owed to <> or to BOUNCE_FROM');
  });

  test('delay warning once after DELAY_WARNING_TIME, only while deferred', async () => {
    const { spool } = await openSpool({ notifications: { ...POLICY, delayWarningMs: 1 } });
    await spool.store(envelope('slow@example.net'), body(), reception);
    await new Promise((r) => setTimeout(r, 5));
    for (let i = 0; i < 3; i++) {
      const [m] = spool.lease(1, Date.now() + 10_000);
      await spool.settle(
        m.id,
        [{ recipient: 'slow@example.net', status: 'deferred', code: 451, reply: '451 4.2.2 full' }],
        { retryAt: Date.now() },
      );
    }
    const pending = spool.pendingNotifications();
    assert.equal(pending.length, 1);
    assert.equal(pending[0].type, 'delay');
    assert.equal(pending[0].recipients[0].status, '4.2.2');
    assert.ok(pending[0].recipients[0].willRetryUntil! > Date.now());
  });
});

describe('queue actions in the spool', () => {
  test('hold, release, retry, delete and bounce: one transaction each, counters follow', async () => {
    const { spool } = await openSpool();
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push(await spool.store(envelope(`r${i}@example.net`), body(), reception));
    const commits = spool.commitStats().commits;
    const held = await spool.act({ action: 'hold', all: true });
    assert.deepEqual(held.changed, ids);
    assert.equal(spool.commitStats().commits, commits + 1, 'one transaction for every message');
    assert.equal(spool.counts().held, 4);
    assert.equal(spool.counts().queued, 0);
    assert.deepEqual(spool.lease(10), [], 'held mail is never leased');
    assert.equal(spool.nextDueAt(), undefined);

    const released = await spool.act({ action: 'release', ids: [ids[0], ids[1]] });
    assert.deepEqual(released.changed, [ids[0], ids[1]]);
    assert.deepEqual(spool.counts().held, 2);
    const leased = spool.lease(10);
    assert.deepEqual(
      leased.map((m) => m.id),
      [ids[0], ids[1]],
    );
    assert.ok(leased[0].heldMs! >= 0);
    for (const m of leased) spool.release(m.id);

    const deleted = await spool.act({ action: 'delete', ids: [ids[2], 'NOSUCHID0-00000000'] });
    assert.deepEqual(deleted.changed, [ids[2]]);
    assert.deepEqual(deleted.unknown, ['NOSUCHID0-00000000']);
    assert.equal(spool.counts().held, 1);

    const bounced = await spool.act({ action: 'bounce', ids: [ids[3], ids[0]], state: 'held' });
    assert.deepEqual(bounced.changed, [ids[3]]);
    assert.deepEqual(bounced.unchanged, [{ id: ids[0], state: 'queued' }]);
    const c = spool.counts();
    assert.deepEqual([c.queued, c.held, c.failed, c.pendingRecipients], [2, 0, 1, 2]);
    const [p] = spool.pendingNotifications();
    assert.equal(p.type, 'operator-bounce');
    assert.equal(p.recipients[0].status, '5.0.0');
  });

  test('an attempt in progress: the action waits for it, or says busy and changes nothing', async () => {
    const { spool } = await openSpool();
    const id = await spool.store(envelope('a@example.net'), body(), reception);
    const [m] = spool.lease(1);
    const busy = await spool.act({ action: 'hold', ids: [id] }, 50);
    assert.deepEqual(busy.busy, [id]);
    assert.deepEqual(busy.changed, []);
    const waiting = spool.act({ action: 'hold', ids: [id] });
    await new Promise((r) => setTimeout(r, 50));
    await spool.settle(
      m.id,
      [{ recipient: 'a@example.net', status: 'deferred', reply: '451 later', code: 451 }],
      {
        retryAt: Date.now(),
      },
    );
    assert.deepEqual(spool.lease(1), [], 'pinned: not leased again between the settle and the action');
    const done = await waiting;
    assert.deepEqual(done.changed, [id]);
    assert.equal(spool.counts().held, 1);
    // A message delivered while the action waited is reported finished.
    const id2 = await spool.store(envelope('b@example.net'), body(), reception);
    const [m2] = spool.lease(1);
    const pending = spool.act({ action: 'hold', ids: [id2] });
    await spool.settle(m2.id, [
      { recipient: 'b@example.net', status: 'delivered', code: 250, reply: '250 Ok' },
    ]);
    assert.deepEqual((await pending).finished, [id2]);
  });

  test('retry keeps attempts; release adds the time held (MAX_QUEUE_AGE does not count it)', async () => {
    const { spool } = await openSpool();
    const id = await spool.store(envelope('a@example.net'), body(), reception);
    const [m] = spool.lease(1);
    await spool.settle(m.id, [{ recipient: 'a@example.net', status: 'deferred', reply: '451', code: 451 }], {
      retryAt: Date.now() + 3_600_000,
    });
    assert.deepEqual(spool.lease(1), []);
    assert.deepEqual((await spool.act({ action: 'retry', ids: [id] })).changed, [id]);
    const [again] = spool.lease(1);
    assert.equal(again.attempts, 1);
    spool.release(again.id, Date.now() + 3_600_000);
    await spool.act({ action: 'hold', ids: [id] });
    await new Promise((r) => setTimeout(r, 60));
    await spool.act({ action: 'release', ids: [id] });
    const [released] = spool.lease(1);
    assert.ok(released, 'due at once, the in-memory hold-back forgotten');
    assert.ok(released.heldMs! >= 50, `heldMs ${released.heldMs}`);
  });
});

describe('schema version 3', () => {
  test('a version-2 spool is migrated in place, keeping its mail', async () => {
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, 'bodies'));
    const db = new Database(path.join(dir, 'spool.db'));
    db.exec(`
      CREATE TABLE messages (id TEXT PRIMARY KEY, mail_from TEXT NOT NULL, reception TEXT NOT NULL,
        received_at INTEGER NOT NULL, size INTEGER NOT NULL, body_in_file INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'deferred', 'held', 'failed')), due_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, pending_recipients INTEGER NOT NULL, finished_at INTEGER,
        after_id TEXT);
      CREATE TABLE recipients (message_id TEXT NOT NULL, position INTEGER NOT NULL, recipient TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'deferred', 'delivered', 'failed', 'suppressed', 'expired')),
        reply TEXT, code INTEGER, PRIMARY KEY (message_id, position)) WITHOUT ROWID;
      CREATE TABLE bodies (id TEXT PRIMARY KEY, data BLOB NOT NULL);
      CREATE TABLE spool_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      INSERT INTO messages VALUES ('0MX0000AA-AAAAAAAA', 'app@example.com', '{"clientAddress":"127.0.0.1"}',
        ${Date.now()}, 6, 0, 'deferred', 0, 1, 1, NULL, NULL);
      INSERT INTO recipients VALUES ('0MX0000AA-AAAAAAAA', 0, 'a@example.net', 'deferred', '451 later', 451);
      INSERT INTO bodies VALUES ('0MX0000AA-AAAAAAAA', x'6869210d0a');
      PRAGMA user_version = 2;`);
    db.close();
    const { spool } = await openSpool({}, dir);
    const [m] = spool.lease(1);
    assert.equal(m.id, '0MX0000AA-AAAAAAAA');
    assert.equal(m.heldMs, 0);
    await spool.settle(m.id, [{ recipient: 'a@example.net', status: 'failed', code: 550, reply: '550 no' }]);
    assert.equal(spool.pendingNotificationCount(), 1, 'the new table works');
    const check = new Database(path.join(dir, 'spool.db'), { readonly: true });
    try {
      assert.equal(check.pragma('user_version', { simple: true }), SCHEMA_VERSION);
      assert.ok(SCHEMA_VERSION >= 3);
    } finally {
      check.close();
    }
  });
});
