/**
 * One rate formula, two implementations: rate-state.ts (TypeScript, the in-process back end) and
 * redis-rate-script.ts (Lua, run by a real redis-server for the shared back end). The same sequences of
 * operations at the same clock values go through both; every answer (admitted or not, the wait, the
 * bucket level, the AIMD fraction, the throttle reaction) must agree. Plus the formula's own behaviour:
 * the bucket starts empty, the in-flight cap, the claim, and the reaction to isolated and repeated 454s.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import Redis from 'ioredis';
import {
  DEFAULT_REACTION,
  earned,
  emptyState,
  finish,
  fraction,
  take,
  throttle,
  type RateParams,
  type RateState,
} from '../src/egress/rate/rate-state';
import { RATE_LUA, parseRateReply, type RateReply } from '../src/egress/rate/redis-rate-script';
import { REDIS_MISSING, REDIS_SERVER, startRedisServer, type RedisServer } from './helpers/redis-server';

const PARAMS: RateParams = {
  rate: 20,
  burst: 10,
  factor: 0.8,
  recoveryMs: 6000,
  holdMs: 1000,
  ...DEFAULT_REACTION,
};

type Op =
  | { op: 'take'; n: number; id: string; probe: boolean }
  | { op: 'finish'; id: string; n: number; refund: boolean }
  | { op: 'throttle' }
  | { op: 'pause' }
  | { op: 'resume' }
  | { op: 'read' };

/** The TypeScript side, with the in-flight set and pause flag the back end keeps. */
class Reference {
  readonly s: RateState;
  readonly inFlight = new Map<string, number>();
  paused = false;
  /** A transaction that asked and was told to wait: it asks again with the same id. */
  waiting?: { id: string; n: number };
  private seq = 0;
  private x: number;

  constructor(
    readonly p: RateParams,
    now: number,
    seed: number,
  ) {
    this.s = emptyState(now);
    this.x = seed;
  }

  rnd(): number {
    return (this.x = (this.x * 1103515245 + 12345) % 2147483648) / 2147483648;
  }

  /** The next operation, chosen from what is possible now (deterministic for a seed). */
  next(): Op {
    const r = this.rnd();
    if (r < 0.45) {
      if (this.waiting && this.rnd() < 0.8) return { op: 'take', ...this.waiting, probe: false };
      const n = 1 + Math.floor(this.rnd() * 4);
      return { op: 'take', n, id: `r:${++this.seq}:${n}`, probe: this.rnd() < 0.1 };
    }
    const open = [...this.inFlight.keys()];
    if (r < 0.75 && open.length) {
      const id = open[Math.floor(this.rnd() * open.length)];
      return { op: 'finish', id, n: this.inFlight.get(id)!, refund: this.rnd() < 0.2 };
    }
    if (r < 0.85) return { op: 'throttle' };
    if (r < 0.9) return { op: this.rnd() < 0.5 ? 'pause' : 'resume' };
    return { op: 'read' };
  }

  private sum(): number {
    return [...this.inFlight.values()].reduce((a, b) => a + b, 0);
  }

  run(op: Op, now: number): { status?: string; waitMs?: number; reaction?: string } {
    switch (op.op) {
      case 'take': {
        const r = take(this.s, this.p, now, op.n, op.id, this.sum(), this.paused, op.probe);
        if (r.status === 'granted') this.inFlight.set(op.id, op.n);
        this.waiting = r.status === 'wait' ? { id: op.id, n: op.n } : undefined;
        return r;
      }
      case 'finish':
        finish(this.s, this.p, now, op.n, this.sum(), op.refund);
        this.inFlight.delete(op.id);
        return {};
      case 'throttle':
        return { reaction: throttle(this.s, this.p, now, this.sum()).reaction };
      case 'pause':
        this.paused = true;
        return {};
      case 'resume':
        this.paused = false;
        return {};
      case 'read':
        return {};
    }
  }

  /** The level at `now` without changing the state (what Lua reports for every operation). */
  level(now: number): number {
    const cap = this.p.burst - this.sum();
    const s = this.s;
    return Math.min(cap, now > s.at ? s.level + earned(s, this.p, s.at, now) : s.level);
  }
}

function luaArgs(p: RateParams, op: string, now: number, ...rest: string[]): string[] {
  return [
    op,
    String(now),
    String(p.rate),
    String(p.burst),
    String(p.factor),
    String(p.recoveryMs),
    String(p.holdMs),
    String(p.debounceMs),
    String(p.repeatMs),
    String(p.floor),
    String(p.claimMs),
    String(1e12), // in-flight entries never expire in these sequences
    ...rest,
  ];
}

const close = (a: number, b: number) => Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(a), Math.abs(b));

describe('rate formula: TypeScript and Lua agree', { skip: REDIS_SERVER ? false : REDIS_MISSING }, () => {
  let server: RedisServer;
  let client: Redis;
  after(async () => {
    client?.disconnect();
    await server?.close();
  });

  async function lua(keys: string[], args: string[]): Promise<RateReply> {
    server ??= await startRedisServer();
    client ??= new Redis(server.url, { maxRetriesPerRequest: 1 });
    return parseRateReply(await client.eval(RATE_LUA, keys.length, ...keys, ...args));
  }

  for (const [name, p] of [
    ['default reaction', PARAMS],
    ['instant recovery, shallow bucket', { ...PARAMS, recoveryMs: 0, burst: 3, rate: 2.5 }],
    ['slow recovery, deep bucket, long hold', { ...PARAMS, recoveryMs: 60_000, burst: 50, holdMs: 2500 }],
  ] as const) {
    for (const seed of [1, 7, 42]) {
      it(`${name}, seed ${seed}: 300 operations, same answers`, async () => {
        const id = `agree-${name.replace(/\W/g, '')}-${seed}`;
        const keys = ['rate', 'inflight', 'pause', 'paused', 'probe'].map((k) => `ses-relay:{${id}}:${k}`);
        let now = 1_700_000_000_000;
        const ts = new Reference(p, now, seed);
        // The Lua side creates its state at the first call: make that call at the same clock.
        await lua(keys, luaArgs(p, 'read', now));
        for (let i = 0; i < 300; i++) {
          now += Math.floor(ts.rnd() * 400);
          const op = ts.next();
          const mine = ts.run(op, now);
          const args =
            op.op === 'take'
              ? [String(op.n), op.id, op.probe ? '1' : '0']
              : op.op === 'finish'
                ? [String(op.n), op.id, op.refund ? '1' : '0']
                : op.op === 'pause'
                  ? ['daily-quota-exceeded']
                  : [];
          const theirs = await lua(keys, luaArgs(p, op.op, now, ...args));
          const where = `op ${i} (${JSON.stringify(op)}) at +${now - 1_700_000_000_000} ms`;
          if (op.op === 'take') {
            assert.equal(theirs.status, mine.status, `${where}: status`);
            assert.ok(
              close(theirs.waitMs, mine.waitMs!),
              `${where}: wait ${theirs.waitMs} vs ${mine.waitMs}`,
            );
          }
          if (op.op === 'throttle') assert.equal(theirs.reaction, mine.reaction, `${where}: reaction`);
          assert.ok(
            close(theirs.level, ts.level(now)),
            `${where}: level ${theirs.level} vs ${ts.level(now)}`,
          );
          const f = fraction(ts.s, p, now);
          assert.ok(close(theirs.fraction, f), `${where}: fraction ${theirs.fraction} vs ${f}`);
          assert.equal(theirs.events, ts.s.events, `${where}: events`);
          assert.equal(
            theirs.inFlight,
            [...ts.inFlight.values()].reduce((a, b) => a + b, 0),
            `${where}: in flight`,
          );
          assert.equal(theirs.pauseReason !== '', ts.paused, `${where}: paused`);
        }
      });
    }
  }
});

/** The same formula driven at explicit clock values, in TypeScript or in Lua (a real redis-server). */
interface Engine {
  take(now: number, n: number, id: string, inFlight?: number): Promise<string>;
  finish(now: number, n: number, id: string): Promise<void>;
  throttle(now: number): Promise<{ reaction: string; fraction: number }>;
  fraction(now: number): Promise<number>;
}

function tsEngine(p: RateParams): Engine {
  const s = emptyState(0);
  let inFlight = 0;
  return {
    async take(now, n, id) {
      const r = take(s, p, now, n, id, inFlight, false, false);
      if (r.status === 'granted') inFlight += n;
      return r.status;
    },
    async finish(now, n) {
      finish(s, p, now, n, inFlight, false);
      inFlight -= n;
    },
    throttle: async (now) => throttle(s, p, now, inFlight),
    fraction: async (now) => fraction(s, p, now),
  };
}

async function luaEngine(p: RateParams, url: string, name: string): Promise<Engine & { close(): void }> {
  const client = new Redis(url, { maxRetriesPerRequest: 1 });
  const keys = ['rate', 'inflight', 'pause', 'paused', 'probe'].map((k) => `ses-relay:{${name}}:${k}`);
  const run = async (...args: string[]) =>
    parseRateReply(await client.eval(RATE_LUA, keys.length, ...keys, ...args));
  await run(...luaArgs(p, 'read', 0));
  return {
    take: async (now, n, id) => (await run(...luaArgs(p, 'take', now, String(n), id, '0'))).status,
    finish: async (now, n, id) => void (await run(...luaArgs(p, 'finish', now, String(n), id, '0'))),
    throttle: async (now) => {
      const r = await run(...luaArgs(p, 'throttle', now));
      return { reaction: r.reaction, fraction: r.fraction };
    },
    fraction: async (now) => (await run(...luaArgs(p, 'read', now))).fraction,
    close: () => client.disconnect(),
  };
}

/** Isolated 454 → drain and brief hold, then the full rate; repeated 454s → decrease, then additive increase. */
async function reactionScenario(e: Engine, p: RateParams): Promise<void> {
  assert.equal(await e.take(10_000, 10, 'a:1:10'), 'granted', 'a full bucket after 10 s');
  await e.finish(10_100, 10, 'a:1:10');
  assert.deepEqual(await e.throttle(10_100), { reaction: 'pause', fraction: 1 }, 'isolated: hold only');
  assert.equal((await e.throttle(10_600)).reaction, 'none', 'within the debounce: the same event');
  // Empty and held for holdMs (1 s), then 20/s again: the first token 50 ms after the hold.
  assert.equal(await e.take(11_000, 1, 'a:2:1'), 'wait');
  assert.equal(await e.take(11_149, 1, 'a:2:1'), 'wait');
  assert.equal(await e.take(11_150, 1, 'a:2:1'), 'granted');
  await e.finish(11_160, 1, 'a:2:1');
  assert.equal(await e.fraction(11_160), 1, 'the full rate after an isolated 454');
  // A second 454 within repeatMs: the rate is too high. × factor, flat during the hold, then +(1 − factor)
  // per recoveryMs.
  const r = await e.throttle(13_000);
  assert.equal(r.reaction, 'decrease');
  assert.ok(Math.abs(r.fraction - 0.8) < 1e-12, `${r.fraction}`);
  assert.ok(Math.abs((await e.fraction(14_000)) - 0.8) < 1e-12, 'flat during the hold');
  assert.ok(Math.abs((await e.fraction(17_000)) - 0.9) < 1e-12, 'half way after half of recoveryMs');
  // Below the full rate every 454 (past the debounce) is a decrease: 0.95 × 0.8 at 18.5 s.
  const again = await e.throttle(18_500);
  assert.equal(again.reaction, 'decrease');
  assert.ok(Math.abs(again.fraction - 0.95 * 0.8) < 1e-9, `${again.fraction}`);
  assert.equal(await e.fraction(18_500 + p.holdMs + p.recoveryMs * (0.24 / 0.2)), 1, 'climbed back');
  // Long quiet at the full rate: a 454 is isolated again.
  assert.equal((await e.throttle(60_000)).reaction, 'pause');
}

describe('the throttle reaction, scripted, in both implementations', () => {
  it('TypeScript (in-process back end)', async () => {
    await reactionScenario(tsEngine(PARAMS), PARAMS);
  });
  it('Lua (Redis back end)', { skip: REDIS_SERVER ? false : REDIS_MISSING }, async (t) => {
    const server = await startRedisServer();
    t.after(() => server.close());
    const e = await luaEngine(PARAMS, server.url, 'reaction');
    t.after(() => e.close());
    await reactionScenario(e, PARAMS);
  });
});

describe('rate formula (TypeScript)', () => {
  const p = PARAMS;
  it('starts empty and refills at the rate, never above burst − in flight', () => {
    const s = emptyState(0);
    assert.equal(take(s, p, 0, 1, 'a:1:1', 0, false, false).status, 'wait');
    assert.equal(take(s, p, 49, 1, 'a:1:1', 0, false, false).status, 'wait');
    assert.equal(take(s, p, 50, 1, 'a:1:1', 0, false, false).status, 'granted');
    // 10 s idle with 4 recipients in flight: the bucket holds 10 − 4 = 6, not 10.
    assert.equal(take(s, p, 10_050, 6, 'a:2:6', 4, false, false).status, 'granted');
    assert.equal(take(s, p, 10_050, 1, 'a:3:1', 10, false, false).status, 'wait');
  });

  it('a claim keeps small transactions from taking what the oldest waiter needs', () => {
    const s = emptyState(0);
    assert.equal(take(s, p, 0, 10, 'big:1:10', 0, false, false).status, 'wait');
    // 250 ms later 5 tokens are there: a small one may not take them, the big one holds the claim.
    assert.equal(take(s, p, 250, 1, 'small:1:1', 0, false, false).status, 'wait');
    assert.equal(take(s, p, 500, 10, 'big:1:10', 0, false, false).status, 'granted');
    assert.equal(take(s, p, 550, 1, 'small:1:1', 0, false, false).status, 'granted');
  });

  it('paused: only a probe is admitted', () => {
    const s = emptyState(0);
    assert.equal(take(s, p, 5000, 1, 'x:1:1', 0, true, false).status, 'paused');
    assert.equal(take(s, p, 5000, 1, 'x:2:1', 0, true, true).status, 'granted');
  });

  it('isolated 454: drained and held, then the full rate; repeated 454: decrease, hold, additive increase', () => {
    const s = emptyState(0);
    take(s, p, 10_000, 10, 'a:1:10', 0, false, false);
    finish(s, p, 10_100, 10, 10, false);
    assert.deepEqual(throttle(s, p, 10_100, 0), { reaction: 'pause', fraction: 1 });
    assert.deepEqual(throttle(s, p, 10_600, 0), { reaction: 'none', fraction: 1 }, 'debounced');
    // Nothing during the hold, then 20/s again.
    assert.equal(take(s, p, 11_000, 1, 'a:2:1', 0, false, false).status, 'wait');
    assert.equal(take(s, p, 11_149, 1, 'a:2:1', 0, false, false).status, 'wait');
    assert.equal(take(s, p, 11_150, 1, 'a:2:1', 0, false, false).status, 'granted');
    // Another 454 within repeatMs: the rate is too high.
    const r = throttle(s, p, 13_000, 0);
    assert.equal(r.reaction, 'decrease');
    assert.ok(Math.abs(r.fraction - 0.8) < 1e-12);
    assert.ok(Math.abs(fraction(s, p, 14_000) - 0.8) < 1e-12, 'flat during the hold');
    assert.ok(Math.abs(fraction(s, p, 17_000) - 0.9) < 1e-12, '+(1 − factor) per recoveryMs, half of it');
    assert.equal(fraction(s, p, 20_000), 1, 'back at the configured rate');
    // Below the full rate any 454 (after the debounce) decreases again; compounding, floored.
    const t = emptyState(0);
    let now = 1000;
    const q = { ...p, holdMs: 1500 }; // no climbing between these 454s
    for (let i = 0; i < 40; i++) throttle(t, q, (now += 1500), 0);
    assert.equal(fraction(t, q, now), p.floor);
  });
});
