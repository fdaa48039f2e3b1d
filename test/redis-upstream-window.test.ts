/**
 * The send-time guard shared through a real redis-server: two replicas' windows share one capacity, entries
 * slide out after a second, a transaction longer than the in-flight TTL keeps counting while it runs (and
 * its finish is recorded even if its entry was lost), a replica that dies mid-transaction stops blocking
 * after the in-flight TTL, and an unreachable Redis refuses admission (delivery pauses) instead of sending
 * unguarded.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import Redis from 'ioredis';
import { RedisUpstreamWindow } from '../src/egress/rate/redis-upstream-window';
import { LimiterUnavailableError } from '../src/egress/rate/limiter';
import { REDIS_MISSING, REDIS_SERVER, startRedisServer, type RedisServer } from './helpers/redis-server';

const skip = REDIS_SERVER ? false : REDIS_MISSING;
let server: RedisServer | undefined;
const clients: Redis[] = [];
after(async () => {
  for (const c of clients) c.disconnect();
  await server?.close();
});

const windows = new Map<RedisUpstreamWindow, Redis>();

async function connect(): Promise<Redis> {
  server ??= await startRedisServer();
  const client = new Redis(server.url, {
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    commandTimeout: 1000,
  });
  clients.push(client);
  await new Promise((r) => client.once('ready', r));
  return client;
}

async function replica(limiterId: string, capacity: number, inFlightTtlMs = 2000) {
  const client = await connect();
  const w = new RedisUpstreamWindow(client, { limiterId, capacity: () => capacity, inFlightTtlMs });
  windows.set(w, client);
  return w;
}

/** A replica killed with kill -9: it never calls done(), never renews, its connection drops. */
function kill(w: RedisUpstreamWindow): void {
  w.close();
  windows.get(w)?.disconnect();
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Admit `n` on `w` in the background; `at()` is when it was admitted (0 while waiting). */
function admitLater(w: RedisUpstreamWindow, n: number) {
  let at = 0;
  const ac = new AbortController();
  const admitted = w.admit(n, ac.signal).then(
    (ticket) => {
      at = Date.now();
      return ticket;
    },
    () => undefined,
  );
  return { at: () => at, admitted, abort: () => ac.abort() };
}

test(
  'two replicas share one window: in flight and recently finished recipients count for both',
  { skip },
  async () => {
    const a = await replica('win-share', 10);
    const b = await replica('win-share', 10);
    const t1 = await a.admit(6);
    const t2 = await b.admit(4);
    let admitted = 0;
    const waiting = b.admit(3).then(() => (admitted = Date.now()));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(admitted, 0, 'full window shared across replicas: waits');
    const finished = Date.now();
    a.done(t1);
    b.done(t2);
    await waiting;
    assert.ok(
      admitted - finished >= 900,
      `admitted ${admitted - finished} ms after the sends finished (window 1 s)`,
    );
    a.close();
    b.close();
  },
);

test('another limiter id has its own window', { skip }, async () => {
  const a = await replica('win-x', 5);
  const b = await replica('win-y', 5);
  await a.admit(5);
  await b.admit(5);
  a.close();
  b.close();
});

test('a replica that dies mid-transaction stops blocking after the in-flight TTL', { skip }, async () => {
  const dead = await replica('win-dead', 10, 300);
  const live = await replica('win-dead', 10, 300);
  await dead.admit(10);
  kill(dead); // never done(), no more renewals
  const t0 = Date.now();
  await live.admit(5);
  const waited = Date.now() - t0;
  assert.ok(waited >= 250 && waited < 3000, `waited ${waited} ms (TTL 300 ms + window 1 s)`);
  live.close();
});

test(
  'a 5 s transaction keeps counting for its whole duration (TTL 2 s), then one more window',
  { skip },
  async (t) => {
    const sending = await replica('win-long', 10);
    const other = await replica('win-long', 10);
    const long = await sending.admit(10); // e.g. a 40 MB body on a slow link
    const t0 = Date.now();
    const waiter = admitLater(other, 1);
    t.after(() => waiter.abort());
    await sleep(5000);
    assert.equal(waiter.at(), 0, `admitted after ${waiter.at() - t0} ms while the 5 s transaction ran`);
    const finished = Date.now();
    sending.done(long);
    await waiter.admitted;
    const after = waiter.at() - finished;
    t.diagnostic(`admitted ${waiter.at() - t0} ms after the start, ${after} ms after the finish`);
    assert.ok(after >= 900 && after < 2500, `admitted ${after} ms after the finish (window 1 s)`);
    assert.equal(sending.inFlightCount, 0, 'nothing left to renew');
    sending.close();
    other.close();
  },
);

test(
  'a replica killed in the middle of a long transaction stops blocking within TTL + window',
  { skip },
  async () => {
    const dying = await replica('win-long-dead', 10);
    const other = await replica('win-long-dead', 10);
    await dying.admit(10);
    await sleep(3000); // longer than the TTL: still counting thanks to the renewals
    const waiter = admitLater(other, 1);
    await sleep(300);
    assert.equal(waiter.at(), 0, 'still in flight after 3 s');
    const killed = Date.now();
    kill(dying);
    await waiter.admitted;
    const waited = waiter.at() - killed;
    assert.ok(
      waited > 0 && waited <= 2000 + 1000 + 500,
      `admitted ${waited} ms after the kill (TTL 2 s + 1 s)`,
    );
    other.close();
  },
);

test(
  'the finish is recorded even if the in-flight entry was lost (Redis emptied meanwhile)',
  { skip },
  async () => {
    const sending = await replica('win-lost', 10);
    const other = await replica('win-lost', 10);
    const raw = await connect();
    const ticket = await sending.admit(10);
    await raw.del(sending.key); // the set is gone: expired while Redis was unreachable, or Redis restarted
    const finished = Date.now();
    sending.done(ticket); // those 10 recipients did reach SES: they count for one more second
    const waiter = admitLater(other, 1);
    await waiter.admitted;
    const waited = waiter.at() - finished;
    assert.ok(waited >= 900, `admitted ${waited} ms after the finish (window 1 s)`);
    sending.close();
    other.close();
  },
);

test(
  'an in-flight entry lost while the transaction runs is put back by the next renewal',
  { skip },
  async (t) => {
    const sending = await replica('win-renew', 10, 400);
    const other = await replica('win-renew', 10, 400);
    const raw = await connect();
    const ticket = await sending.admit(10);
    await raw.del(sending.key);
    await sleep(250); // a renewal every 100 ms
    assert.ok((await raw.zcard(sending.key)) === 1, 'the entry is back');
    const waiter = admitLater(other, 1);
    t.after(() => waiter.abort());
    await sleep(800);
    assert.equal(waiter.at(), 0, 'still counting');
    sending.done(ticket);
    await waiter.admitted;
    sending.close();
    other.close();
  },
);

test('Redis unreachable: admission is refused, not granted unguarded', { skip }, async () => {
  const w = await replica('win-down', 10);
  await server!.stop();
  await assert.rejects(w.admit(1), LimiterUnavailableError);
  await server!.restart();
  w.close();
});
