/**
 * Recipients in flight, shared through a real redis-server: one replica's transactions on the wire hold
 * their room in the bucket for every replica, a transaction longer than the in-flight TTL keeps holding
 * it while it runs (renewals, and a lost entry is put back), a replica that dies mid-transaction stops
 * holding it after the TTL, and an unreachable Redis refuses admission (delivery pauses) instead of
 * sending unguarded.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import Redis from 'ioredis';
import type { RateAdmission, Ticket } from '../src/egress/rate/admission';
import { LimiterUnavailableError } from '../src/egress/rate/admission-errors';
import { createAdmission } from '../src/egress/rate/admission-factory';
import { settings, sleep } from './helpers/admission';
import { REDIS_MISSING, REDIS_SERVER, startRedisServer, type RedisServer } from './helpers/redis-server';

const skip = REDIS_SERVER ? false : REDIS_MISSING;
let server: RedisServer | undefined;
const made: RateAdmission[] = [];
const clients: Redis[] = [];
after(async () => {
  await Promise.all(made.map((a) => a.stop()));
  for (const c of clients) c.disconnect();
  await server?.close();
});

/**
 * A replica of `limiterId`: 1000 recipients/s, so tokens are never what it waits for — only the room
 * that recipients in flight hold (burst 10).
 */
async function replica(limiterId: string, inFlightTtlMs = 2000): Promise<RateAdmission> {
  server ??= await startRedisServer();
  const a = await createAdmission(
    settings({ redisUrl: server.url, limiterId, rate: 1000, burst: 10, redis: { inFlightTtlMs } }),
  );
  made.push(a);
  await sleep(30); // the empty bucket fills
  return a;
}

async function raw(): Promise<Redis> {
  const client = new Redis(server!.url, { maxRetriesPerRequest: 0 });
  clients.push(client);
  await new Promise((r) => client.once('ready', r));
  return client;
}

const signal = new AbortController().signal;

/** Admit `n` on `a` in the background; `at()` is when it was admitted (0 while waiting). */
function admitLater(a: RateAdmission, n: number) {
  let at = 0;
  const ac = new AbortController();
  const admitted = a.admit(n, ac.signal).then(
    (ticket) => {
      at = Date.now();
      return ticket;
    },
    () => undefined,
  );
  return { at: () => at, admitted, abort: () => ac.abort() };
}

const done = async (t: Promise<Ticket | undefined>) => (await t)?.settle({ delivered: 1 });

test('two replicas share the room: recipients in flight at one hold it for the other', { skip }, async () => {
  const a = await replica('win-share');
  const b = await replica('win-share');
  const t1 = await a.admit(6, signal);
  const t2 = await b.admit(4, signal);
  const waiter = admitLater(b, 3);
  await sleep(300);
  assert.equal(waiter.at(), 0, 'in flight across replicas fills the bucket: waits');
  const finished = Date.now();
  await t1.settle({ delivered: 6 });
  await done(waiter.admitted);
  assert.ok(waiter.at() - finished < 200, `admitted ${waiter.at() - finished} ms after the answer`);
  await t2.settle({ delivered: 4 });
});

test('another limiter id has its own room', { skip }, async () => {
  const a = await replica('win-x');
  const b = await replica('win-y');
  const ta = await a.admit(10, signal);
  const tb = await b.admit(10, signal);
  await Promise.all([ta.settle({ delivered: 10 }), tb.settle({ delivered: 10 })]);
});

test(
  'a replica that dies mid-transaction stops holding the room after the in-flight TTL',
  { skip },
  async () => {
    const dead = await replica('win-dead', 300);
    const live = await replica('win-dead', 300);
    await dead.admit(10, signal);
    await dead.stop(); // killed: never settles, no more renewals
    const t0 = Date.now();
    const t = await live.admit(5, signal);
    const waited = Date.now() - t0;
    assert.ok(waited >= 200 && waited < 2000, `waited ${waited} ms (TTL 300 ms)`);
    await t.settle({ delivered: 5 });
  },
);

test('a 5 s transaction holds its room for its whole duration (TTL 2 s)', { skip }, async (t) => {
  const sending = await replica('win-long');
  const other = await replica('win-long');
  const long = await sending.admit(10, signal); // e.g. a 40 MB body on a slow link
  const t0 = Date.now();
  const waiter = admitLater(other, 1);
  t.after(() => waiter.abort());
  await sleep(5000);
  assert.equal(waiter.at(), 0, `admitted after ${waiter.at() - t0} ms while the 5 s transaction ran`);
  const finished = Date.now();
  await long.settle({ delivered: 10 });
  await done(waiter.admitted);
  const after = waiter.at() - finished;
  t.diagnostic(`admitted ${waiter.at() - t0} ms after the start, ${after} ms after the answer`);
  assert.ok(after < 500, `admitted ${after} ms after the answer`);
});

test(
  'a replica killed in the middle of a long transaction stops holding within the TTL',
  { skip },
  async () => {
    const dying = await replica('win-long-dead');
    const other = await replica('win-long-dead');
    await dying.admit(10, signal);
    await sleep(3000); // longer than the TTL: still held thanks to the renewals
    const waiter = admitLater(other, 1);
    await sleep(300);
    assert.equal(waiter.at(), 0, 'still in flight after 3 s');
    const killed = Date.now();
    await dying.stop();
    await done(waiter.admitted);
    const waited = waiter.at() - killed;
    assert.ok(waited > 0 && waited <= 2000 + 500, `admitted ${waited} ms after the kill (TTL 2 s)`);
  },
);

test(
  'an in-flight entry lost while the transaction runs is put back by the next renewal',
  { skip },
  async (t) => {
    const sending = await replica('win-renew', 400);
    const other = await replica('win-renew', 400);
    const redis = await raw();
    const key = 'ses-relay:{win-renew}:inflight';
    const ticket = await sending.admit(10, signal);
    await redis.del(key); // lost: Redis restarted empty, or the entry expired while Redis was unreachable
    await sleep(250); // a renewal every 100 ms
    assert.equal(await redis.zcard(key), 1, 'the entry is back');
    const waiter = admitLater(other, 1);
    t.after(() => waiter.abort());
    await sleep(800);
    assert.equal(waiter.at(), 0, 'still held');
    await ticket.settle({ delivered: 10 });
    await done(waiter.admitted);
  },
);

test('Redis unreachable: admission is refused, not granted unguarded', { skip }, async () => {
  const a = await replica('win-down');
  await server!.stop();
  await sleep(300);
  await assert.rejects(a.admit(1, signal), LimiterUnavailableError);
  await server!.restart();
});
