/**
 * The send-time guard shared through a real redis-server: two replicas' windows share one capacity, entries
 * slide out after a second, a replica that dies mid-transaction stops blocking after the in-flight TTL,
 * and an unreachable Redis refuses admission (delivery pauses) instead of sending unguarded.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import Redis from 'ioredis';
import { RedisUpstreamWindow } from '../src/egress/redis-upstream-window';
import { LimiterUnavailableError } from '../src/egress/limiter';
import { REDIS_MISSING, REDIS_SERVER, startRedisServer, type RedisServer } from './helpers/redis-server';

const skip = REDIS_SERVER ? false : REDIS_MISSING;
let server: RedisServer | undefined;
const clients: Redis[] = [];
after(async () => {
  for (const c of clients) c.disconnect();
  await server?.close();
});

async function replica(limiterId: string, capacity: number, inFlightTtlMs = 2000) {
  server ??= await startRedisServer();
  const client = new Redis(server.url, {
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    commandTimeout: 1000,
  });
  clients.push(client);
  await new Promise((r) => client.once('ready', r));
  return new RedisUpstreamWindow(client, { limiterId, capacity: () => capacity, inFlightTtlMs });
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
  await dead.admit(10); // never done(): the replica "died"
  const t0 = Date.now();
  await live.admit(5);
  const waited = Date.now() - t0;
  assert.ok(waited >= 250 && waited < 3000, `waited ${waited} ms (TTL 300 ms + window 1 s)`);
  dead.close();
  live.close();
});

test('Redis unreachable: admission is refused, not granted unguarded', { skip }, async () => {
  const w = await replica('win-down', 10);
  await server!.stop();
  await assert.rejects(w.admit(1), LimiterUnavailableError);
  await server!.restart();
  w.close();
});
