/**
 * A spool that cannot be written (issue 8, defect 2): a failed settle used to drop the lease, so the
 * message was leased and sent again at once, at the full rate, for as long as writes failed (243 copies
 * of one message in 2 s here). Now a failed write keeps the message leased and its outcome in memory,
 * delivery pauses (nothing leased, no transaction started), `ses_relay_spool_writable` is 0, and
 * everything resumes by itself once writes work — each recipient reaching SES exactly once.
 *
 * The failure is simulated with SQLite's `query_only` pragma (every write fails with SQLITE_READONLY,
 * as on a read-only file system); test/spool-disk-full.test.ts does the same with a real full tmpfs.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import type Database from 'better-sqlite3';
import pino from 'pino';
import { registry } from '../src/observability/metrics';
import { SpoolWriteError } from '../src/spool/spool';
import { SqliteSpool } from '../src/spool/sqlite-spool';
import { silentLogger } from '../src/observability/logger';
import { startEgress, waitUntil } from './helpers/egress-harness';
import { tempDir } from './helpers/relay-process';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const dbOf = (spool: SqliteSpool) => (spool as unknown as { db: Database.Database }).db;
const readOnly = (spool: SqliteSpool, on: boolean) => dbOf(spool).pragma(`query_only = ${on ? 'ON' : 'OFF'}`);

async function gauge(name: string): Promise<number> {
  const m = await registry.getSingleMetric(name)?.get();
  return m?.values[0]?.value ?? NaN;
}

function perRecipient(messages: Array<{ recipients: string[] }>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of messages) for (const r of m.recipients) counts.set(r, (counts.get(r) ?? 0) + 1);
  return counts;
}

describe('delivery while the spool cannot be written', () => {
  it('sends nothing twice, pauses, reports it, and resumes by itself', async (t) => {
    const h = await startEgress({ paused: true, poolSize: 1, spoolRetryMs: [50, 400] });
    t.after(() => h.close());
    for (const r of ['a', 'b', 'c']) await h.store([`${r}@example.com`]);
    readOnly(h.spool, true);
    h.dispatcher.start();
    await h.ses.waitFor(1, 5000);
    await sleep(1500); // the old code sent the first message again and again in this time
    const during = h.ses.messages.length;
    t.diagnostic(`deliveries in 1.5 s with a read-only spool: ${during} (3 messages stored)`);
    // The first message, and at most the one already waiting for the connection when the first write
    // failed (poolSize 1: in flight); each once, and the third not at all while outcomes are unwritten.
    assert.ok(during <= 2, `${during} deliveries while the spool is read-only`);
    assert.equal(perRecipient(h.ses.messages).size, during, 'nothing went out twice');
    assert.equal(h.spool.health().writable, false);
    assert.equal(h.dispatcher.paused, true);
    assert.equal(await gauge('ses_relay_spool_writable'), 0);
    assert.equal(h.spool.counts().sending, 2, 'the sent messages (or the one waiting) stay leased');
    assert.ok((await gauge('ses_relay_spool_settle_retries_total')) >= 2, 'the outcome write was retried');

    readOnly(h.spool, false);
    await h.drained(10_000);
    assert.deepEqual(
      [...perRecipient(h.ses.messages)].sort(),
      [
        ['a@example.com', 1],
        ['b@example.com', 1],
        ['c@example.com', 1],
      ],
      'each recipient reached SES exactly once',
    );
    assert.equal(h.spool.health().writable, true);
    assert.equal(h.dispatcher.paused, false);
    assert.equal(await gauge('ses_relay_spool_writable'), 1);
  });

  it('a message in several transactions: a failed record holds the next transaction back', async (t) => {
    const h = await startEgress({ paused: true, burst: 2, poolSize: 1, spoolRetryMs: [50, 200] });
    t.after(() => h.close());
    const rcpts = Array.from({ length: 6 }, (_, i) => `r${i}@example.com`);
    await h.store(rcpts);
    let first = true;
    h.ses.script((ctx) => {
      if (ctx.phase === 'data' && first) {
        first = false;
        readOnly(h.spool, true); // the disk fails while SES accepts the first transaction
      }
      return undefined;
    });
    h.dispatcher.start();
    await h.ses.waitFor(1, 5000);
    await sleep(800);
    assert.equal(h.ses.messages.length, 1, 'no second transaction while the first one is unrecorded');
    readOnly(h.spool, false);
    await h.drained(10_000);
    assert.deepEqual(
      h.ses.messages.map((m) => m.recipients.length),
      [2, 2, 2],
    );
    assert.ok(
      [...perRecipient(h.ses.messages).values()].every((n) => n === 1),
      'each recipient exactly once',
    );
  });
});

describe('shutdown while an outcome cannot be written', () => {
  it('stop(grace) gives up after its grace and says what may go out again', async (t) => {
    const lines: Array<Record<string, unknown>> = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) });
    const h = await startEgress({ paused: true, poolSize: 1, spoolRetryMs: [50, 100], logger });
    t.after(() => h.close());
    await h.store(['a@example.com']);
    readOnly(h.spool, true);
    h.dispatcher.start();
    await h.ses.waitFor(1, 5000);
    await waitUntil(() => lines.some((l) => l.event === 'spool:outcome-unwritten'), 2000, 'a failed write');
    const t0 = Date.now();
    await h.dispatcher.stop(300);
    assert.ok(Date.now() - t0 < 1500, `stop took ${Date.now() - t0} ms`);
    const released = lines.find((l) => l.event === 'message:released');
    assert.equal(released?.unrecordedDelivered, 1, 'the log says one delivered recipient is unrecorded');
    assert.equal(h.ses.messages.length, 1);
    readOnly(h.spool, false);
  });
});

describe('SqliteSpool when writes fail', () => {
  const body = () => Readable.from([Buffer.from('Subject: x\r\n\r\nx\r\n')]);
  const reception = { clientAddress: '127.0.0.1' };

  it('a failed settle keeps the lease; retrying it is safe, even if the failed write had landed', async (t) => {
    const spool = await SqliteSpool.open({ dir: tempDir(), logger: silentLogger });
    t.after(() => spool.close());
    const a = await spool.store({ mailFrom: '', recipients: ['a@x.test'] }, body(), reception);
    const b = await spool.store({ mailFrom: '', recipients: ['b@x.test'] }, body(), reception);
    assert.equal(spool.lease(10).length, 2);
    readOnly(spool, true);
    const delivered = [{ recipient: 'a@x.test', status: 'delivered' as const }];
    await assert.rejects(spool.settle(a, delivered), SpoolWriteError);
    await assert.rejects(spool.settle(b, [{ recipient: 'b@x.test', status: 'delivered' }]), SpoolWriteError);
    assert.equal(spool.health().writable, false);
    assert.deepEqual(spool.lease(10), [], 'both stay leased: out of circulation');
    assert.equal(spool.counts().sending, 2);
    readOnly(spool, false);
    assert.equal(await spool.settle(a, delivered), 'delivered', 'the retry writes the outcome');
    assert.equal(spool.health().writable, true);
    // A COMMIT that reported an error may still have reached the disk: the retry finds nothing to do.
    dbOf(spool).prepare('DELETE FROM messages WHERE id = ?').run(b);
    assert.equal(await spool.settle(b, [{ recipient: 'b@x.test', status: 'delivered' }]), 'delivered');
    assert.equal(spool.counts().sending, 0);
    await assert.rejects(spool.settle(b, []), /no message/, 'but only for a retry');
  });

  it('release(id, dueAt) holds the message back in memory when the row cannot be written', async (t) => {
    const spool = await SqliteSpool.open({ dir: tempDir(), logger: silentLogger });
    t.after(() => spool.close());
    const id = await spool.store({ mailFrom: '', recipients: ['a@x.test'] }, body(), reception);
    spool.lease(1);
    readOnly(spool, true);
    const later = Date.now() + 60_000;
    spool.release(id, later);
    assert.deepEqual(spool.lease(10), [], 'not leased again before its due time');
    assert.equal(spool.nextDueAt(), later);
    assert.deepEqual(
      spool.lease(10, later).map((m) => m.id),
      [id],
    );
    readOnly(spool, false);
  });

  it('isWritable() probes with a real write and brings health back', async (t) => {
    const spool = await SqliteSpool.open({ dir: tempDir(), logger: silentLogger });
    t.after(() => spool.close());
    readOnly(spool, true);
    assert.equal(await spool.isWritable(), false);
    assert.equal(spool.health().writable, false);
    assert.match(spool.health().error ?? '', /readonly/i);
    readOnly(spool, false);
    assert.equal(await spool.isWritable(), true);
    await waitUntil(() => spool.health().writable, 1000, 'writable');
  });
});
