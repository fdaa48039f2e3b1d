/**
 * Throttle reaction (issue 9, section 4): how the relay drains a backlog into an SES that enforces its
 * sending rate strictly, and what Postfix does with the same job against the same fake SES, in one run.
 *
 * The fake SES (test/helpers/fake-ses.ts, `rateLimit`) is a strict token bucket in recipients, capacity =
 * one second of its true rate (default 30/s), starting full; a transaction whose recipients do not all fit
 * gets `454 Throttling failure: Maximum sending rate exceeded` at the end of DATA and is dropped, as SES
 * does, so the sender must resend it. Each scenario drains a bounded backlog (BACKLOG_S seconds of mail at
 * the true rate, in messages of 1-3 recipients, fixed pattern), submitted at once:
 *
 *   a. 1 relay, SES_RATE_LIMIT = the true rate;
 *   b. 3 relays sharing one real redis-server (REDIS_URL), same rate, the backlog split between them;
 *   c. 1 relay configured at 5/3 of what the fake grants (50/s against 30/s), a backlog twice as long;
 *   and Postfix relaying the backlog of (a) to the same kind of fake (bench/lib/postfix.ts, STARTTLS + AUTH):
 *   p1. `smtp_destination_rate_delay = 1s` (Postfix's rate control; whole seconds only, and one delivery
 *       at a time per destination), `smtp_destination_recipient_limit` = the bucket;
 *   p2. no rate delay, `smtp_destination_concurrency_limit = 4` (the relay's SES_POOL_SIZE), so SES's 454
 *       is the only brake; the recipient limit as in p1.
 *   Both retry deferred mail with FAST_RETRY (bench/lib/postfix.ts: scans every 1 s, backoff 2-4 s).
 *
 * Measured at the fake: achieved = accepted / (drain time + 1 s), drain time = first arrival -> last
 * acceptance, and + 1 s because the bucket starts full with one second of rate (a sender that keeps SES's
 * bucket busy scores 1.00 of the true rate); also accepted / time over the second half of the drain; refused = recipient attempts answered 454 /
 * all recipient attempts; the busiest second of acceptances (a strict bucket allows capacity + rate) and
 * of arrivals. Issue 9's bars are printed beside the figures.
 *
 *   BENCH_ONLY=throttle npm run bench          (full: ~6 min)     BENCH_QUICK=1 ... (~2 min)
 *   env: BENCH_THROTTLE_RATE (default 30), BENCH_THROTTLE_SECONDS (default 30, quick 10),
 *        BENCH_THROTTLE_SCENARIOS (default "a,b,c,p1,p2")
 */
import fs from 'node:fs';
import { MAIN, TEST_CA, fakeSesEnv, type RelayProcess } from '../test/helpers/relay-process';
import { startFakeSes, type FakeSes } from '../test/helpers/fake-ses';
import {
  REDIS_MISSING,
  REDIS_SERVER,
  startRedisServer,
  type RedisServer,
} from '../test/helpers/redis-server';
import { startBenchRelay, stopBenchRelay } from './lib/relay';
import { FAST_RETRY, postfixUnavailable, startPostfix, type PostfixInstance } from './lib/postfix';
import { submitPooled, type BenchMessage } from './lib/submit';
import { drainStats, waitForDrain, type DrainStats } from './lib/upstream-stats';
import { fixed, heading, percent, quickMode, table } from './lib/report';

/** Recipients per message, repeated (mean 1.3): mostly single-recipient mail, like transactional load. */
const PATTERN = [1, 1, 1, 1, 2, 1, 1, 1, 3, 1];

interface Scenario {
  key: string;
  title: string;
  who: 'relay' | 'postfix';
  replicas: number;
  /** SES_RATE_LIMIT for the relay (undefined for Postfix). */
  configured?: number;
  /** Postfix main.cf rate settings. */
  postfix?: Record<string, string>;
  backlogSeconds: number;
  bar: { achieved: number; refused: number; over: 'run' | 'second half' };
}

interface Row {
  scenario: Scenario;
  stats: DrainStats;
  drained: boolean;
  /** Accepted recipients per 5 s slice, as a fraction of the true rate (the shape of the drain). */
  timeline: number[];
  /** When SES refused a transaction (seconds after the first arrival). */
  refusedAt: number[];
}

export function backlog(recipients: number, tag: string): BenchMessage[] {
  const messages: BenchMessage[] = [];
  let left = recipients;
  for (let i = 0; left > 0; i++) {
    const n = Math.min(left, PATTERN[i % PATTERN.length]);
    left -= n;
    messages.push({
      from: 'sender@bench.example',
      to: Array.from({ length: n }, (_, k) => `${tag}-${i}-${k}@bench.example`),
      subject: `throttle bench ${tag} ${i}`,
    });
  }
  return messages;
}

function scenarios(rate: number, seconds: number): Scenario[] {
  const steady = { achieved: 0.95, refused: 0.005, over: 'run' as const };
  const postfixBase = { smtp_destination_recipient_limit: String(rate), ...FAST_RETRY };
  return [
    {
      key: 'a',
      title: 'a. 1 relay',
      who: 'relay',
      replicas: 1,
      configured: rate,
      backlogSeconds: seconds,
      bar: steady,
    },
    {
      key: 'b',
      title: 'b. 3 relays, Redis',
      who: 'relay',
      replicas: 3,
      configured: rate,
      backlogSeconds: seconds,
      bar: steady,
    },
    {
      key: 'c',
      title: 'c. 1 relay at 5/3',
      who: 'relay',
      replicas: 1,
      configured: Math.round((rate * 5) / 3),
      backlogSeconds: seconds * 2,
      bar: { achieved: 0.85, refused: 0.05, over: 'second half' },
    },
    {
      key: 'p1',
      title: 'p1. Postfix, rate delay 1s',
      who: 'postfix',
      replicas: 1,
      postfix: { ...postfixBase, smtp_destination_rate_delay: '1s' },
      backlogSeconds: seconds,
      bar: steady,
    },
    {
      key: 'p2',
      title: 'p2. Postfix, 4 connections, no delay',
      who: 'postfix',
      replicas: 1,
      postfix: { ...postfixBase, smtp_destination_concurrency_limit: '4' },
      backlogSeconds: seconds,
      bar: steady,
    },
  ];
}

function timeline(ses: FakeSes, rate: number): number[] {
  const at = ses.messages.map((m) => m.at);
  const refusedAt = ses.refusals.map((r) => r.at);
  if (!at.length) return [];
  const first = Math.min(...at, ...refusedAt);
  const slices: number[] = [];
  for (const m of ses.messages) {
    const i = Math.floor((m.at - first) / 5000);
    slices[i] = (slices[i] ?? 0) + m.recipients.length;
  }
  return Array.from(slices, (n) => (n ?? 0) / (rate * 5));
}

async function runRelays(s: Scenario, ses: FakeSes, messages: BenchMessage[], limitMs: number) {
  let redis: RedisServer | undefined;
  const relays: RelayProcess[] = [];
  try {
    const env: Record<string, string> = {
      ...fakeSesEnv(ses.port),
      SES_RATE_LIMIT: String(s.configured),
    };
    if (s.replicas > 1) {
      if (!REDIS_SERVER) throw new Error(REDIS_MISSING);
      redis = await startRedisServer();
      env.REDIS_URL = redis.url;
      env.LIMITER_ID = `bench-throttle-${process.pid}-${s.key}`;
    }
    for (let i = 0; i < s.replicas; i++) relays.push(await startBenchRelay(env));
    // A load balancer in front of the replicas: messages dealt round-robin, all submitted at once.
    await Promise.all(
      relays.map((r, i) =>
        submitPooled(
          r.smtpPort,
          messages.filter((_, k) => k % relays.length === i),
        ),
      ),
    );
    const total = messages.reduce((n, m) => n + m.to.length, 0);
    return await waitForDrain(ses, total, Date.now() + limitMs);
  } finally {
    for (const r of relays) await stopBenchRelay(r);
    await redis?.close();
  }
}

async function runPostfix(s: Scenario, ses: FakeSes, messages: BenchMessage[], limitMs: number) {
  let pf: PostfixInstance | undefined;
  try {
    pf = await startPostfix({
      relayhost: {
        host: ses.host,
        port: ses.port,
        username: ses.username,
        password: ses.password,
        caFile: TEST_CA,
      },
      mainCf: s.postfix,
    });
    await submitPooled(pf.port, messages);
    const total = messages.reduce((n, m) => n + m.to.length, 0);
    return await waitForDrain(ses, total, Date.now() + limitMs);
  } finally {
    await pf?.stop();
  }
}

async function measure(s: Scenario, rate: number): Promise<Row> {
  const ses = await startFakeSes({ rateLimit: { perSecond: rate, burst: rate } });
  try {
    const recipients = Math.round(rate * s.backlogSeconds);
    const messages = backlog(recipients, s.key);
    // Bounded, from the end of submission: Postfix's rate delay drains ~1 message/s, so it gets the
    // backlog's own duration (the figures cover what arrived); everything else 4x the ideal drain + 60 s.
    const limit = s.postfix?.smtp_destination_rate_delay
      ? s.backlogSeconds * 1000
      : s.backlogSeconds * 4000 + 60_000;
    const run = s.who === 'relay' ? runRelays : runPostfix;
    const drained = await run(s, ses, messages, limit);
    const stats = drainStats(ses, { expected: recipients, capacity: rate, rate });
    const first = Math.min(...ses.messages.map((m) => m.at), ...ses.refusals.map((r) => r.at));
    const refusedAt = ses.refusals.map((r) => (r.at - first) / 1000);
    return { scenario: s, stats, drained, timeline: timeline(ses, rate), refusedAt };
  } finally {
    await ses.close();
  }
}

function verdict(r: Row, rate: number): string {
  const { bar } = r.scenario;
  const achieved = (bar.over === 'run' ? r.stats.achieved : r.stats.secondHalf) / rate;
  return achieved >= bar.achieved && r.stats.refusedShare <= bar.refused && r.drained ? 'yes' : 'no';
}

export function throttleTable(rows: Row[], rate: number): string {
  return table(
    [
      'scenario',
      'configured',
      'recipients (msgs)',
      'delivered',
      'drain s',
      'achieved / true',
      '2nd half / true',
      'refused 454 (first 2 s)',
      'max 1 s accepted (allowed)',
      'max 1 s arrivals',
      'bar (issue 9)',
      'meets',
    ],
    rows.map((r) => {
      const s = r.scenario;
      const st = r.stats;
      const msgs = backlog(st.expected, s.key).length;
      return [
        s.title,
        s.configured !== undefined
          ? `${s.configured}/s`
          : s.postfix?.smtp_destination_rate_delay
            ? 'delay 1s'
            : 'none',
        `${st.expected} (${msgs})`,
        `${st.accepted}${r.drained ? '' : ' (bounded)'}${st.duplicates ? `, ${st.duplicates} dup` : ''}`,
        fixed(st.seconds, 1),
        fixed(st.achieved / rate, 2),
        fixed(st.secondHalf / rate, 2),
        `${percent(st.refusedShare, 2)} = ${st.refused} (${st.refusedEarly})`,
        `${st.max1sAccepted} (${2 * rate})`,
        String(st.max1sArrivals),
        `>= ${s.bar.achieved} (${s.bar.over}), <= ${percent(s.bar.refused, 1)}`,
        verdict(r, rate),
      ];
    }),
  );
}

export async function main(): Promise<void> {
  const quick = quickMode();
  const rate = Number(process.env.BENCH_THROTTLE_RATE ?? 30);
  const seconds = Number(process.env.BENCH_THROTTLE_SECONDS ?? (quick ? 10 : 30));
  heading(`Throttle reaction: backlog into a fake SES enforcing ${rate} recipients/s strictly`, quick);
  if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
  const wanted = (process.env.BENCH_THROTTLE_SCENARIOS ?? 'a,b,c,p1,p2').split(',').map((k) => k.trim());
  const noPostfix = postfixUnavailable();
  const rows: Row[] = [];
  for (const s of scenarios(rate, seconds)) {
    if (!wanted.includes(s.key)) continue;
    if (s.who === 'postfix' && noPostfix) {
      console.log(`  ${s.title}: skipped (${noPostfix})`);
      continue;
    }
    if (s.replicas > 1 && !REDIS_SERVER) {
      console.log(`  ${s.title}: skipped (${REDIS_MISSING})`);
      continue;
    }
    const row = await measure(s, rate);
    console.log(
      `  ${s.title}: ${row.stats.accepted}/${row.stats.expected} recipients in ${fixed(row.stats.seconds, 1)} s, ` +
        `${row.stats.refused} refused; per 5 s / true rate: ${row.timeline.map((x) => fixed(x, 2)).join(' ')}` +
        (row.refusedAt.length
          ? `; 454 at +${row.refusedAt
              .slice(0, 12)
              .map((x) => fixed(x, 1))
              .join(' +')} s${row.refusedAt.length > 12 ? ` ... (${row.refusedAt.length} in all)` : ''}`
          : ''),
    );
    rows.push(row);
  }
  console.log(
    `\nFake SES: strict bucket of ${rate} recipients, ${rate}/s, whole transaction refused with 454 after DATA ` +
      `when it does not fit. Backlog: ${seconds} s of mail at ${rate}/s (c: ${2 * seconds} s), messages of ` +
      `1-3 recipients, submitted at once over 10 connections (per replica). Relays: dist/main.js, defaults ` +
      `except SES_RATE_LIMIT (burst = rate). achieved = accepted / (drain time + 1 s); refused = 454'd ` +
      `recipient attempts / all attempts, (in the first 2 s); "bounded" = stopped before the backlog drained.\n`,
  );
  console.log(throttleTable(rows, rate));
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}
