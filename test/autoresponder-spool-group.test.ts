/**
 * The spool's ordered groups (storeGroup), which the autoresponder stores its replies with: one commit for
 * the whole group (all or nothing), delivery one after the other (a message is not leased while its
 * predecessor is pending), the route kept with each message, and the `after_id` column added in place to a
 * database created before it existed.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { silentLogger } from '../src/observability/logger';
import { SpoolWriteError, type GroupMessage } from '../src/spool/spool';
import { SqliteSpool } from '../src/spool/sqlite-spool';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-group-'));
  dirs.push(d);
  return d;
}

async function open(dir = tempDir()) {
  const spool = await SqliteSpool.open({ dir, logger: silentLogger, inlineBodyMaxBytes: 1024 });
  after(() => spool.close());
  return { spool, dir };
}

function member(text: string | Buffer, route?: string): GroupMessage {
  return {
    envelope: { mailFrom: 'responder@example.org', recipients: ['requester@example.net'] },
    body: Readable.from([Buffer.isBuffer(text) ? text : Buffer.from(text)], { objectMode: false }),
    reception: { clientAddress: '192.0.2.1', heloName: 'mx.example.net' },
    ...(route ? { route } : {}),
  };
}

async function bodyOf(spool: SqliteSpool, id: string): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of spool.openBody(id)) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString();
}

const delivered = (r: string) => [{ recipient: r, status: 'delivered' as const, code: 250, reply: '250 Ok' }];

test('a group is leased one message at a time, in order, each after its predecessor left the pending set', async () => {
  const { spool } = await open();
  const ids = await spool.storeGroup([member('one'), member('two', 'smtp'), member('three')]);
  assert.equal(ids.length, 3);
  assert.equal(spool.counts().pending, 3);
  assert.equal(spool.counts().pendingRecipients, 3);
  for (let i = 0; i < ids.length; i++) {
    const leased = spool.lease(10);
    assert.deepEqual(
      leased.map((m) => m.id),
      [ids[i]],
      `only message ${i} is leasable`,
    );
    assert.equal(await bodyOf(spool, ids[i]), ['one', 'two', 'three'][i]);
    assert.deepEqual(spool.lease(10), [], 'nothing else while it is leased');
    assert.equal(await spool.settle(ids[i], delivered('requester@example.net')), 'delivered');
  }
  assert.equal(spool.counts().pending, 0);
  assert.equal(spool.nextDueAt(), undefined);
});

test('a deferred predecessor holds its successor back; a failed one lets it go; nextDueAt skips the blocked one', async () => {
  const { spool } = await open();
  const [first, second] = await spool.storeGroup([member('first'), member('second')]);
  assert.equal(spool.lease(10)[0].id, first);
  const retryAt = Date.now() + 60_000;
  await spool.settle(first, [{ recipient: 'requester@example.net', status: 'deferred', reply: '451' }], {
    retryAt,
  });
  assert.deepEqual(spool.lease(10, Date.now() + 1000), [], 'the successor waits while the first is deferred');
  assert.equal(
    spool.nextDueAt(),
    retryAt,
    'the next due time is the predecessor retry, not the blocked message',
  );
  assert.equal(spool.lease(10, retryAt)[0].id, first);
  await spool.settle(first, [
    { recipient: 'requester@example.net', status: 'failed', code: 550, reply: '550' },
  ]);
  assert.equal(spool.counts().failed, 1);
  assert.deepEqual(
    spool.lease(10).map((m) => m.id),
    [second],
    'a permanently failed predecessor no longer holds the successor',
  );
});

test('routes are kept with each message; plain store and other groups are not held back', async () => {
  const { spool } = await open();
  const a = await spool.storeGroup([member('a1', 'smtp'), member('a2')]);
  const b = await spool.storeGroup([member('b1')]);
  const plain = await spool.store(
    { mailFrom: 's@example.com', recipients: ['r@example.com'] },
    Readable.from([Buffer.from('plain')]),
    { clientAddress: '127.0.0.1' },
  );
  assert.equal(spool.routeOf(a[0]), 'smtp');
  assert.equal(spool.routeOf(a[1]), undefined);
  assert.equal(spool.routeOf(plain), undefined);
  assert.equal(spool.routeOf('NOSUCHID00-00000000'), undefined);
  assert.deepEqual(
    spool
      .lease(10)
      .map((m) => m.id)
      .sort(),
    [a[0], b[0], plain].sort(),
  );
});

test('order and routes survive a restart; large bodies go to files and come back intact', async () => {
  const dir = tempDir();
  const big = randomBytes(5000).toString('base64');
  const first = await SqliteSpool.open({ dir, logger: silentLogger, inlineBodyMaxBytes: 1024 });
  const ids = await first.storeGroup([member(big, 'smtp'), member('small')]);
  assert.equal(fs.readdirSync(path.join(dir, 'bodies')).length, 1, 'the large body is a file');
  await first.close();
  const { spool } = await open(dir);
  assert.deepEqual(
    spool.lease(10).map((m) => m.id),
    [ids[0]],
  );
  assert.equal(spool.routeOf(ids[0]), 'smtp');
  assert.equal(await bodyOf(spool, ids[0]), big);
});

test('a body that fails to read stores none of the group and leaves no file', async () => {
  const { spool, dir } = await open();
  const broken = new Readable({
    read() {
      this.destroy(new Error('attachment unreadable'));
    },
  });
  const big = member(randomBytes(4000));
  await assert.rejects(
    spool.storeGroup([big, { ...member('x'), body: broken }]),
    (err: unknown) => err instanceof SpoolWriteError,
  );
  assert.equal(spool.counts().pending, 0);
  assert.deepEqual(spool.lease(10), []);
  assert.deepEqual(fs.readdirSync(path.join(dir, 'bodies')), [], 'the first body file was removed again');
});

test('a version-1 spool (before ordered groups) gets the after_id column in place and keeps its mail', async () => {
  const dir = tempDir();
  // A spool in today's layout, taken back to version 1: the layout without after_id (version 2) and
  // without the DSN, hold and notification additions (version 3).
  const { spool: fresh } = await open(dir);
  await fresh.close();
  const db = new Database(path.join(dir, 'spool.db'));
  // Back to version 1 as that release wrote it: none of the later columns, indexes or tables.
  db.exec(`DROP INDEX messages_tenant_due`);
  const laterColumns = [
    'after_id',
    'dsn_ret',
    'dsn_envid',
    'held_at',
    'held_ms',
    'delay_warned',
    'tenant',
    'tenant_weight',
  ];
  for (const column of laterColumns) db.exec(`ALTER TABLE messages DROP COLUMN ${column}`);
  db.exec(`ALTER TABLE recipients DROP COLUMN dsn_notify; ALTER TABLE recipients DROP COLUMN dsn_orcpt;`);
  db.exec(`DROP TABLE notifications; PRAGMA user_version = 1;`);
  const now = Date.now();
  db.prepare(
    `INSERT INTO messages (id, mail_from, reception, received_at, size, body_in_file, state, due_at, attempts, pending_recipients)
     VALUES ('OLDMESSAG-00000001', 's@example.com', '{"clientAddress":"127.0.0.1"}', ?, 3, 0, 'queued', ?, 0, 1)`,
  ).run(now, now);
  db.prepare(
    `INSERT INTO recipients (message_id, position, recipient, status) VALUES ('OLDMESSAG-00000001', 0, 'r@example.com', 'queued')`,
  ).run();
  db.prepare(`INSERT INTO bodies (id, data) VALUES ('OLDMESSAG-00000001', ?)`).run(Buffer.from('old'));
  db.close();

  const { spool } = await open(dir);
  const check = new Database(path.join(dir, 'spool.db'), { readonly: true });
  const columns = (check.prepare(`PRAGMA table_info(messages)`).all() as Array<{ name: string }>).map(
    (c) => c.name,
  );
  check.close();
  assert.ok(columns.includes('after_id'));
  assert.deepEqual(
    spool.lease(10).map((m) => m.id),
    ['OLDMESSAG-00000001'],
  );
  const ids = await spool.storeGroup([member('new1'), member('new2')]);
  assert.deepEqual(
    spool.lease(10).map((m) => m.id),
    [ids[0]],
  );
});
