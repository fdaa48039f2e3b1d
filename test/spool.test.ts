import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { silentLogger } from '../src/observability/logger';
import { SpoolWriteError } from '../src/spool/spool';
import { isQueueId, newQueueId } from '../src/spool/queue-id';
import { LEASE_SQL, NEXT_DUE_SQL, OLDEST_SQL, SqliteSpool } from '../src/spool/sqlite-spool';
import type { Envelope } from '../src/types';

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-test-'));
  tempDirs.push(dir);
  return dir;
}

const reception = { clientAddress: '127.0.0.1', heloName: 'client.example', authUser: 'app' };

function envelope(...recipients: string[]): Envelope {
  return {
    mailFrom: 'sender@example.com',
    recipients: recipients.length ? recipients : ['rcpt@example.com'],
  };
}

/** A body stream delivered in small chunks, like smtp-server's DATA stream. */
function bodyStream(data: Buffer, chunkSize = 16 * 1024): Readable {
  const chunks: Buffer[] = [];
  for (let i = 0; i < data.length; i += chunkSize) chunks.push(data.subarray(i, i + chunkSize));
  return Readable.from(chunks, { objectMode: false });
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function bodyFiles(dir: string): string[] {
  return fs.readdirSync(path.join(dir, 'bodies')).sort();
}

function rowCount(dir: string, table: string): number {
  const db = new Database(path.join(dir, 'spool.db'), { readonly: true });
  try {
    return db.prepare(`SELECT count(*) FROM ${table}`).pluck().get() as number;
  } finally {
    db.close();
  }
}

async function openSpool(
  dir = tempDir(),
  extra: { failedRetentionMs?: number; inlineBodyMaxBytes?: number } = {},
) {
  const spool = await SqliteSpool.open({ dir, logger: silentLogger, ...extra });
  after(() => spool.close());
  return { spool, dir };
}

describe('queue ids', () => {
  test('are unique, well formed and sort by time', () => {
    const ids = new Set<string>();
    for (let i = 0; i < 10_000; i++) ids.add(newQueueId());
    assert.equal(ids.size, 10_000);
    for (const id of ids) assert.ok(isQueueId(id), id);
    assert.ok(newQueueId(1_000) < newQueueId(2_000_000_000_000));
  });
});

describe('SqliteSpool', () => {
  test('store, lease and openBody round-trip inline and file bodies byte for byte', async () => {
    const { spool, dir } = await openSpool(undefined, { inlineBodyMaxBytes: 64 * 1024 });
    const text = Buffer.from(
      'Subject: hi\r\nFrom: a@example.com\r\n\r\nline one\r\n.dot\r\n\r\nend\n\r',
      'latin1',
    );
    const binary = randomBytes(50_000); // inline, with every byte value
    const big = Buffer.concat([randomBytes(700_000), Buffer.from('\r\n.\r\n\0\xff')]); // file body
    const ids = [
      await spool.store(envelope('one@example.com'), bodyStream(text, 7), reception),
      await spool.store(envelope('two@example.com', 'three@example.com'), bodyStream(binary), reception),
      await spool.store(envelope('four@example.com'), bodyStream(big, 65_536), reception),
    ];
    const bodies = [text, binary, big];
    assert.deepEqual(bodyFiles(dir), [`${ids[2]}.eml`]);

    const leased = spool.lease(10);
    assert.deepEqual(
      leased.map((m) => m.id),
      ids,
    );
    for (const [i, message] of leased.entries()) {
      assert.equal(message.size, bodies[i].length);
      assert.equal(message.attempts, 0);
      assert.equal(message.reception.clientAddress, '127.0.0.1');
      assert.equal(message.reception.heloName, 'client.example');
      assert.equal(message.reception.authUser, 'app');
      assert.ok(message.reception.receivedAt > 0 && message.reception.receivedAt <= Date.now());
      assert.ok(message.dueAt <= Date.now());
      assert.ok((await readAll(spool.openBody(message.id))).equals(bodies[i]), `body ${i} differs`);
    }
    assert.deepEqual(leased[1].envelope, envelope('two@example.com', 'three@example.com'));
  });

  test('string chunks and an empty body are stored exactly', async () => {
    const { spool } = await openSpool();
    const stream = new PassThrough({ encoding: 'utf8' });
    const stored = spool.store(envelope(), stream, reception);
    stream.write('Subject: ünïcode\r\n\r\n');
    stream.end('body\r\n');
    const id = await stored;
    assert.equal((await readAll(spool.openBody(id))).toString('utf8'), 'Subject: ünïcode\r\n\r\nbody\r\n');
    const empty = await spool.store(envelope(), Readable.from([]), reception);
    assert.equal((await readAll(spool.openBody(empty))).length, 0);
  });

  test('concurrent stores share commits (group commit)', async () => {
    const { spool } = await openSpool();
    const before = spool.commitStats();
    const body = Buffer.alloc(4096, 'x');
    const ids = await Promise.all(
      Array.from({ length: 50 }, () => spool.store(envelope(), bodyStream(body), reception)),
    );
    assert.equal(new Set(ids).size, 50);
    const stats = spool.commitStats();
    const commits = stats.commits - before.commits;
    assert.equal(stats.operations - before.operations, 50);
    assert.ok(commits < 10, `expected few commits for 50 concurrent stores, got ${commits}`);
    assert.ok(stats.maxBatch > 1);
    assert.equal(spool.counts().pending, 50);
  });

  test('a body stream error leaves nothing behind (inline and file)', async () => {
    const { spool, dir } = await openSpool(undefined, { inlineBodyMaxBytes: 1024 });
    for (const size of [100, 10_000]) {
      const stream = new PassThrough();
      const stored = spool.store(envelope(), stream, reception);
      stream.write(randomBytes(size));
      await new Promise((resolve) => setTimeout(resolve, 20));
      stream.destroy(new Error('message too big'));
      await assert.rejects(stored, (err: unknown) => {
        assert.ok(err instanceof SpoolWriteError);
        assert.match(String((err.cause as Error).message), /too big/);
        return true;
      });
    }
    assert.deepEqual(bodyFiles(dir), []);
    assert.equal(rowCount(dir, 'messages'), 0);
    assert.equal(rowCount(dir, 'bodies'), 0);
    assert.equal(rowCount(dir, 'recipients'), 0);
    assert.deepEqual(spool.counts().pending, 0);
  });

  test('settle: delivered removes the message and its body file', async () => {
    const { spool, dir } = await openSpool(undefined, { inlineBodyMaxBytes: 10 });
    const id = await spool.store(
      envelope('a@example.com', 'b@example.com'),
      bodyStream(Buffer.alloc(100, 'z')),
      reception,
    );
    assert.deepEqual(bodyFiles(dir), [`${id}.eml`]);
    spool.lease(1);
    const state = await spool.settle(id, [
      { recipient: 'a@example.com', status: 'delivered', code: 250, reply: '250 Ok' },
      { recipient: 'b@example.com', status: 'delivered', code: 250, reply: '250 Ok' },
    ]);
    assert.equal(state, 'delivered');
    await waitFor(() => bodyFiles(dir).length === 0);
    assert.equal(rowCount(dir, 'messages'), 0);
    assert.equal(rowCount(dir, 'recipients'), 0);
    assert.deepEqual(spool.counts(), {
      pending: 0,
      queued: 0,
      sending: 0,
      deferred: 0,
      held: 0,
      failed: 0,
      pendingRecipients: 0,
      oldestReceivedAt: undefined,
    });
    assert.throws(() => spool.openBody(id), /no message/);
  });

  test('settle: partial delivery with deferral, retryAt and attempts; countAttempt false', async () => {
    const { spool } = await openSpool();
    const id = await spool.store(
      envelope('a@x.test', 'b@x.test', 'c@x.test'),
      bodyStream(Buffer.from('hi')),
      reception,
    );
    assert.equal(spool.counts().pendingRecipients, 3);
    spool.lease(1);
    const retryAt = Date.now() + 60_000;
    const state = await spool.settle(
      id,
      [
        { recipient: 'a@x.test', status: 'delivered', code: 250 },
        { recipient: 'b@x.test', status: 'deferred', code: 451, reply: '451 try later' },
        { recipient: 'c@x.test', status: 'deferred', code: 451, reply: '451 try later' },
      ],
      { retryAt },
    );
    assert.equal(state, 'deferred');
    let counts = spool.counts();
    assert.equal(counts.pending, 1);
    assert.equal(counts.deferred, 1);
    assert.equal(counts.sending, 0);
    assert.equal(counts.pendingRecipients, 2);
    assert.deepEqual(spool.lease(10), [], 'not due before retryAt');
    assert.equal(spool.nextDueAt(), retryAt);

    const [again] = spool.lease(10, retryAt);
    assert.equal(again.id, id);
    assert.equal(again.attempts, 1);
    assert.equal(again.dueAt, retryAt);
    assert.deepEqual(again.envelope.recipients, ['b@x.test', 'c@x.test']);

    // SES throttling: does not count as an attempt.
    const retry2 = retryAt + 1000;
    assert.equal(
      await spool.settle(
        id,
        [
          { recipient: 'b@x.test', status: 'deferred', code: 454 },
          { recipient: 'c@x.test', status: 'deferred', code: 454 },
        ],
        {
          retryAt: retry2,
          countAttempt: false,
        },
      ),
      'deferred',
    );
    const [third] = spool.lease(10, retry2);
    assert.equal(third.attempts, 1);
    assert.equal(third.dueAt, retry2);

    assert.equal(
      await spool.settle(id, [
        { recipient: 'b@x.test', status: 'delivered' },
        { recipient: 'c@x.test', status: 'suppressed', reply: 'on suppression list' },
      ]),
      'delivered',
    );
    counts = spool.counts();
    assert.equal(counts.pending, 0);
    assert.equal(counts.pendingRecipients, 0);
    assert.deepEqual(spool.listFailed(), []);
  });

  test('settle: deferral requires retryAt', async () => {
    const { spool } = await openSpool();
    const id = await spool.store(envelope(), bodyStream(Buffer.from('x')), reception);
    await assert.rejects(
      spool.settle(id, [{ recipient: 'rcpt@example.com', status: 'deferred' }]),
      TypeError,
    );
  });

  test('settle: failed and expired recipients keep the message as failed with reasons', async () => {
    const { spool, dir } = await openSpool(undefined, { inlineBodyMaxBytes: 10 });
    const bodyData = Buffer.alloc(1000, 'f');
    const id = await spool.store(
      envelope('ok@x.test', 'bad@x.test', 'old@x.test'),
      bodyStream(bodyData),
      reception,
    );
    spool.lease(1);
    const state = await spool.settle(id, [
      { recipient: 'ok@x.test', status: 'delivered', code: 250, reply: '250 Ok' },
      { recipient: 'bad@x.test', status: 'failed', code: 550, reply: '550 5.1.1 mailbox unavailable' },
      { recipient: 'old@x.test', status: 'expired', reply: 'queue lifetime exceeded' },
    ]);
    assert.equal(state, 'failed');
    const counts = spool.counts();
    assert.equal(counts.pending, 0);
    assert.equal(counts.failed, 1);
    assert.deepEqual(spool.lease(10), []);
    const [failed] = spool.listFailed();
    assert.equal(failed.id, id);
    assert.deepEqual(failed.envelope.recipients, ['ok@x.test', 'bad@x.test', 'old@x.test']);
    assert.equal(failed.reception.clientAddress, '127.0.0.1');
    assert.ok(failed.finishedAt > 0);
    assert.deepEqual(failed.outcomes, [
      { recipient: 'ok@x.test', status: 'delivered', code: 250, reply: '250 Ok' },
      { recipient: 'bad@x.test', status: 'failed', code: 550, reply: '550 5.1.1 mailbox unavailable' },
      { recipient: 'old@x.test', status: 'expired', reply: 'queue lifetime exceeded' },
    ]);
    // The body is kept for inspection.
    assert.ok((await readAll(spool.openBody(id))).equals(bodyData));
    assert.deepEqual(bodyFiles(dir), [`${id}.eml`]);
    await assert.rejects(
      spool.settle(id, [{ recipient: 'ok@x.test', status: 'delivered' }]),
      /already finished/,
    );
  });

  test('failed messages are pruned after the retention time, on open and by prune()', async () => {
    const dir = tempDir();
    const first = await SqliteSpool.open({
      dir,
      logger: silentLogger,
      failedRetentionMs: 60_000,
      inlineBodyMaxBytes: 10,
    });
    const id = await first.store(envelope(), bodyStream(Buffer.alloc(100)), reception);
    await first.settle(id, [{ recipient: 'rcpt@example.com', status: 'failed', code: 550 }]);
    assert.equal(await first.prune(), 0, 'still within retention');
    assert.equal(await first.prune(Date.now() + 61_000), 1);
    assert.equal(first.counts().failed, 0);
    await waitFor(() => bodyFiles(dir).length === 0);

    const id2 = await first.store(envelope(), bodyStream(Buffer.alloc(5)), reception);
    await first.settle(id2, [{ recipient: 'rcpt@example.com', status: 'failed', code: 550 }]);
    await first.close();
    const second = await SqliteSpool.open({ dir, logger: silentLogger, failedRetentionMs: 0 });
    after(() => second.close());
    assert.equal(second.counts().failed, 0);
    assert.deepEqual(second.listFailed(), []);
  });

  test('settle: all recipients suppressed', async () => {
    const { spool } = await openSpool();
    const id = await spool.store(envelope('a@x.test', 'b@x.test'), bodyStream(Buffer.from('x')), reception);
    const state = await spool.settle(id, [
      { recipient: 'a@x.test', status: 'suppressed', reply: 'suppressed' },
      { recipient: 'b@x.test', status: 'suppressed', reply: 'suppressed' },
    ]);
    assert.equal(state, 'delivered', 'finished and removed: every recipient delivered or suppressed');
    assert.equal(spool.counts().pending, 0);
    assert.equal(spool.counts().failed, 0);
  });

  test('settle: unknown message is rejected', async () => {
    const { spool } = await openSpool();
    await assert.rejects(
      spool.settle('NOPE', [{ recipient: 'a@x.test', status: 'delivered' }]),
      /no message/,
    );
  });

  test('one failing operation in a batch fails alone', async () => {
    const { spool } = await openSpool();
    const a = await spool.store(envelope('a@x.test'), bodyStream(Buffer.from('a')), reception);
    const b = await spool.store(envelope('b@x.test'), bodyStream(Buffer.from('b')), reception);
    const before = spool.commitStats().commits;
    const [first, bad, second] = await Promise.allSettled([
      spool.settle(a, [{ recipient: 'a@x.test', status: 'delivered' }]),
      spool.settle('NOPE', [{ recipient: 'a@x.test', status: 'delivered' }]),
      spool.settle(b, [{ recipient: 'b@x.test', status: 'failed', code: 550 }]),
    ]);
    assert.deepEqual(first, { status: 'fulfilled', value: 'delivered' });
    assert.equal(bad.status, 'rejected');
    assert.deepEqual(second, { status: 'fulfilled', value: 'failed' });
    assert.equal(spool.commitStats().commits, before + 1, 'all three were in one transaction');
    assert.deepEqual(
      spool.listFailed().map((m) => m.id),
      [b],
    );
    assert.equal(spool.counts().pending, 0);
  });

  test('lease is exclusive until settled or released; release with dueAt', async () => {
    const { spool } = await openSpool();
    const ids: string[] = [];
    for (let i = 0; i < 5; i++)
      ids.push(await spool.store(envelope(), bodyStream(Buffer.from(`m${i}`)), reception));
    const a = spool.lease(2);
    const b = spool.lease(2);
    const c = spool.lease(10);
    assert.deepEqual(
      [...a, ...b, ...c].map((m) => m.id),
      ids,
    );
    assert.deepEqual(spool.lease(10), []);
    assert.equal(spool.nextDueAt(), undefined);
    assert.equal(spool.counts().sending, 5);

    spool.release(ids[0]);
    const later = Date.now() + 30_000;
    spool.release(ids[1], later);
    assert.equal(spool.counts().sending, 3);
    assert.deepEqual(
      spool.lease(10).map((m) => m.id),
      [ids[0]],
    );
    assert.equal(spool.nextDueAt(), later);
    assert.deepEqual(
      spool.lease(10, later).map((m) => m.id),
      [ids[1]],
    );
    assert.equal(spool.counts().pending, 5);
    assert.equal(spool.lease(0).length, 0);
  });

  test('counts track messages by state (queued, sending, deferred, failed), recipients and oldest', async () => {
    const { spool } = await openSpool();
    const t0 = Date.now();
    const a = await spool.store(envelope('1@x.test', '2@x.test'), bodyStream(Buffer.from('a')), reception);
    await spool.store(envelope('3@x.test'), bodyStream(Buffer.from('b')), reception);
    const c = await spool.store(envelope('4@x.test'), bodyStream(Buffer.from('c')), reception);
    let counts = spool.counts();
    assert.equal(counts.pending, 3);
    assert.equal(counts.pendingRecipients, 4);
    assert.ok(counts.oldestReceivedAt !== undefined && counts.oldestReceivedAt >= t0);
    spool.lease(1);
    await spool.settle(
      a,
      [
        { recipient: '1@x.test', status: 'deferred' },
        { recipient: '2@x.test', status: 'deferred' },
      ],
      {
        retryAt: Date.now() + 60_000,
      },
    );
    spool.lease(1);
    await spool.settle(c, [{ recipient: '4@x.test', status: 'failed', code: 550 }]);
    counts = spool.counts();
    assert.deepEqual(
      { ...counts, oldestReceivedAt: undefined },
      {
        pending: 2,
        queued: 0,
        sending: 1,
        deferred: 1,
        held: 0,
        failed: 1,
        pendingRecipients: 3,
        oldestReceivedAt: undefined,
      },
    );
  });

  test('reopen recovers pending messages (leases are forgotten) and their bodies', async () => {
    const dir = tempDir();
    const first = await SqliteSpool.open({ dir, logger: silentLogger, inlineBodyMaxBytes: 100 });
    const small = Buffer.from('small body\r\n');
    const large = randomBytes(5000);
    const a = await first.store(envelope('a@x.test'), bodyStream(small), reception);
    const b = await first.store(envelope('b@x.test', 'c@x.test'), bodyStream(large, 333), reception);
    const d = await first.store(envelope('d@x.test'), bodyStream(small), reception);
    first.lease(10);
    await first.settle(
      b,
      [
        { recipient: 'b@x.test', status: 'delivered' },
        { recipient: 'c@x.test', status: 'deferred', code: 421 },
      ],
      { retryAt: Date.now() + 1000 },
    );
    await first.settle(d, [{ recipient: 'd@x.test', status: 'delivered' }]);
    await first.close();
    await first.close(); // idempotent
    await assert.rejects(first.store(envelope(), bodyStream(small), reception), SpoolWriteError);

    const second = await SqliteSpool.open({ dir, logger: silentLogger, inlineBodyMaxBytes: 100 });
    after(() => second.close());
    const counts = second.counts();
    assert.equal(counts.pending, 2);
    assert.equal(counts.pendingRecipients, 2);
    assert.equal(counts.sending, 0);
    const leased = second.lease(10, Date.now() + 2000);
    assert.deepEqual(
      leased.map((m) => m.id),
      [a, b],
    );
    assert.deepEqual(leased[1].envelope.recipients, ['c@x.test']);
    assert.equal(leased[1].attempts, 1);
    assert.ok((await readAll(second.openBody(a))).equals(small));
    assert.ok((await readAll(second.openBody(b))).equals(large));
  });

  test('open removes orphan .tmp files and body files without a row', async () => {
    const dir = tempDir();
    const first = await SqliteSpool.open({ dir, logger: silentLogger, inlineBodyMaxBytes: 10 });
    const kept = await first.store(envelope(), bodyStream(Buffer.alloc(100, 'k')), reception);
    await first.close();
    const orphanId = newQueueId();
    fs.writeFileSync(path.join(dir, 'bodies', `${orphanId}.tmp`), 'half written');
    fs.writeFileSync(path.join(dir, 'bodies', `${newQueueId()}.eml`), 'fsynced but never committed');
    fs.writeFileSync(path.join(dir, 'bodies', 'garbage.eml'), 'x');
    assert.equal(bodyFiles(dir).length, 4);
    const { spool } = await openSpool(dir, { inlineBodyMaxBytes: 10 });
    assert.deepEqual(bodyFiles(dir), [`${kept}.eml`]);
    assert.equal(spool.counts().pending, 1);
    assert.ok((await readAll(spool.openBody(kept))).equals(Buffer.alloc(100, 'k')));
  });

  test('a failing body directory rejects with SpoolWriteError and leaves nothing', async () => {
    const { spool, dir } = await openSpool(undefined, { inlineBodyMaxBytes: 1024 });
    const bodies = path.join(dir, 'bodies');
    // Replace the body directory by a regular file: creating <id>.tmp fails with ENOTDIR.
    fs.rmSync(bodies, { recursive: true });
    fs.writeFileSync(bodies, 'not a directory');
    const stream = bodyStream(randomBytes(200_000), 4096);
    await assert.rejects(spool.store(envelope(), stream, reception), (err: unknown) => {
      assert.ok(err instanceof SpoolWriteError);
      assert.equal((err.cause as NodeJS.ErrnoException).code, 'ENOTDIR');
      return true;
    });
    assert.ok(stream.readableEnded, 'the rest of the body was drained, not left hanging');
    assert.equal(rowCount(dir, 'messages'), 0);
    assert.equal(spool.health().writable, false, 'a body that cannot be written makes the spool unwritable');
    assert.equal(await spool.isWritable(), false, 'the probe writes where large bodies go');
    // Small bodies do not touch the body directory and still work.
    await spool.store(envelope(), bodyStream(Buffer.from('small')), reception);
    fs.rmSync(bodies);
    fs.mkdirSync(bodies);
    assert.equal(spool.counts().pending, 1);
    assert.equal(await spool.isWritable(), true);
    assert.equal(spool.health().writable, true);
  });

  test('a failing database write (disk full) rejects with SpoolWriteError and leaves nothing', async () => {
    const { spool, dir } = await openSpool(undefined, { inlineBodyMaxBytes: 64 * 1024 });
    await spool.store(envelope(), bodyStream(Buffer.from('before')), reception);
    // SQLite's own "database or disk is full" path: cap the database at its current size.
    const db = spool['db'];
    const pages = db.pragma('page_count', { simple: true }) as number;
    db.pragma(`max_page_count = ${pages}`);
    const results = await Promise.allSettled([
      spool.store(envelope(), bodyStream(randomBytes(30_000)), reception), // inline: needs new pages
      // A file body whose rows (2000 recipients) need new pages: the file must be removed again.
      spool.store(
        envelope(...Array.from({ length: 2000 }, (_, i) => `recipient-${i}@example.com`)),
        bodyStream(randomBytes(100_000)),
        reception,
      ),
    ]);
    for (const result of results) {
      assert.equal(result.status, 'rejected');
      assert.ok(result.reason instanceof SpoolWriteError, String(result.reason));
    }
    assert.deepEqual(bodyFiles(dir), []);
    assert.equal(spool.counts().pending, 1);
    db.pragma('max_page_count = 1073741823');
    await spool.store(envelope(), bodyStream(Buffer.from('after')), reception);
    assert.equal(spool.counts().pending, 2);
    assert.equal(rowCount(dir, 'messages'), 2);
  });

  test('isWritable is false when the spool directory is gone', async () => {
    const { spool, dir } = await openSpool();
    assert.equal(await spool.isWritable(), true);
    const moved = `${dir}-moved`;
    tempDirs.push(moved);
    fs.renameSync(dir, moved);
    fs.writeFileSync(dir, 'now a file');
    tempDirs.push(dir);
    try {
      assert.equal(await spool.isWritable(), false);
    } finally {
      fs.rmSync(dir);
      fs.renameSync(moved, dir);
    }
  });

  test('queries use the indexes (EXPLAIN QUERY PLAN)', async () => {
    const { dir } = await openSpool();
    const db = new Database(path.join(dir, 'spool.db'), { readonly: true });
    try {
      const plan = (sql: string, ...params: unknown[]) =>
        (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as Array<{ detail: string }>)
          .map((r) => r.detail)
          .join('; ');
      for (const sql of [LEASE_SQL]) {
        const detail = plan(sql, Date.now());
        assert.match(detail, /USING (COVERING )?INDEX messages_due/, detail);
        assert.doesNotMatch(detail, /TEMP B-TREE/, detail);
      }
      const next = plan(NEXT_DUE_SQL);
      assert.match(next, /USING INDEX messages_due/, next);
      assert.doesNotMatch(next, /TEMP B-TREE/, next);
      assert.match(plan(OLDEST_SQL), /messages_received/);
    } finally {
      db.close();
    }
  });

  test(
    'a 100 000-message backlog keeps memory flat and lease/counts working',
    { timeout: 45_000 },
    async (t) => {
      const { spool } = await openSpool();
      const body = Buffer.from('Subject: backlog\r\n\r\nhello\r\n');
      const total = 100_000;
      const concurrency = 500;
      global.gc?.();
      const rssBefore = process.memoryUsage().rss;
      let next = 0;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < total) {
            const i = next++;
            await spool.store(envelope(`r${i}@x.test`), Readable.from([body]), reception);
          }
        }),
      );
      const counts = spool.counts();
      assert.equal(counts.pending, total);
      assert.equal(counts.pendingRecipients, total);
      const leased = spool.lease(100);
      assert.equal(leased.length, 100);
      assert.equal(spool.counts().sending, 100);
      assert.ok(spool.nextDueAt() !== undefined);
      await Promise.all(
        leased.map((m) => spool.settle(m.id, [{ recipient: m.envelope.recipients[0], status: 'delivered' }])),
      );
      assert.equal(spool.counts().pending, total - 100);
      global.gc?.();
      const growthMb = (process.memoryUsage().rss - rssBefore) / 1024 / 1024;
      t.diagnostic(`RSS growth for a 100k backlog: ${growthMb.toFixed(0)} MB`);
      assert.ok(growthMb < 150, `RSS grew by ${growthMb.toFixed(0)} MB`);
    },
  );
});

async function waitFor(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
