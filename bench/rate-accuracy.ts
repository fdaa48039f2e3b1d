/**
 * Rate accuracy: a backlog of recipients (default 5000, in messages of 1..50 recipients drawn from a fixed
 * seed) is submitted to the relay (built dist/main.js) as fast as a pooled nodemailer client can, and the
 * relay drains it to a fake SES that accepts everything (no rate limit of its own, so what we measure is the
 * relay's limiter). Per SES_RATE_LIMIT (14 and 200 recipients/s):
 *
 * - achieved rate = (recipients accepted upstream - those of the first upstream transaction) / (last - first
 *   upstream acceptance): the bucket starts empty (src/egress/rate/local-backend.ts), so the first transaction
 *   leaves once its tokens are earned and every later recipient was earned between the first acceptance
 *   and the last: a perfect limiter scores 100 % (bench/shared-rate.ts, whose shared bucket starts full,
 *   subtracts the burst instead); reported as a fraction of the limit (the relay must drain at
 *   >= 98 %). Slightly above 100 % is the first transaction reaching SES late (its connection is still
 *   being opened: TCP, STARTTLS, AUTH) while the next tokens accrue; the grants themselves are bounded
 *   (test/egress-limiter.test.ts);
 * - the most recipients accepted upstream in any 1-second window (sliding, on the fake SES's acceptance
 *   timestamps) against the bound rate x 1 s + burst;
 * - total recipients upstream (more than submitted would mean duplicates).
 *
 * Two ways to load the backlog (BENCH_RATE_MODES, default both): `live` submits it to the running relay
 * (ingress is far faster than either rate, so the backlog is spooled long before it drains, but the first
 * second overlaps with the submission); `preloaded` submits it to a first relay limited to 0.001/s, stops it,
 * and starts the measured relay on that spool. The measurement runs from the first upstream acceptance to
 * the last.
 *
 *   node --import tsx bench/rate-accuracy.ts          (npm run build first; ~13 minutes)
 *   BENCH_QUICK=1 node --import tsx bench/rate-accuracy.ts     (max(300, 10 x rate) recipients, ~1 min)
 *   env: BENCH_RATE_RECIPIENTS (default 5000), BENCH_RATES (default "14,200"),
 *        BENCH_RATE_MODES (default "live,preloaded")
 */
import fs from 'node:fs';
import nodemailer from 'nodemailer';
import { MAIN, fakeSesEnv, type RelayProcess } from '../test/helpers/relay-process';
import { startBenchRelay, stopBenchRelay } from './lib/relay';
import { startFakeSes, type FakeSes } from '../test/helpers/fake-ses';
import { fixed, heading, percent, quickMode, seededRandom, table } from './lib/report';

/**
 * live: the backlog is submitted to the running relay, which starts draining while mail still comes in.
 * preloaded: the backlog is submitted to a first relay limited to 0.001 recipients/s (one recipient leaves),
 * that relay is stopped, and a second one with the real rate starts on the same spool: the whole backlog is
 * there before the first grant.
 */
export type BacklogMode = 'live' | 'preloaded';

export interface RateResult {
  mode: BacklogMode;
  rate: number;
  burst: number;
  recipients: number;
  messages: number;
  submitSeconds: number;
  transactions: number;
  upstreamRecipients: number;
  /** Recipients that left during preloading (the loader relay's single token); not in the drain figures. */
  sentWhileLoading: number;
  spanSeconds: number;
  achieved: number;
  maxInOneSecond: number;
  /** Where that busiest window starts, in seconds after the first upstream acceptance. */
  maxWindowAt: number;
  /** The busiest 1-second window that starts at least 2 s after the first acceptance (steady state). */
  maxInOneSecondSteady: number;
  bound: number;
}

interface Stamp {
  at: number;
  recipients: number;
}

/** Busiest window [t, t + ms) over acceptance stamps (sorted by time), ignoring windows starting before `from`. */
export function busiestWindow(stamps: Stamp[], ms: number, from = -Infinity): { count: number; at: number } {
  let best = { count: 0, at: NaN };
  let sum = 0;
  let hi = 0;
  // Two pointers: for each window start `lo`, extend `hi` while stamps are inside [lo.at, lo.at + ms).
  for (let lo = 0; lo < stamps.length; lo++) {
    while (hi < stamps.length && stamps[hi].at - stamps[lo].at < ms) sum += stamps[hi++].recipients;
    if (stamps[lo].at >= from && sum > best.count) best = { count: sum, at: stamps[lo].at };
    sum -= stamps[lo].recipients;
  }
  return best;
}

/** Recipient counts per message: uniform 1..50 from a fixed seed, the last one trimmed to hit `total`. */
export function backlogShape(total: number, seed = 2026): number[] {
  const rnd = seededRandom(seed);
  const sizes: number[] = [];
  let left = total;
  while (left > 0) {
    const n = Math.min(left, 1 + Math.floor(rnd() * 50));
    sizes.push(n);
    left -= n;
  }
  return sizes;
}

async function submitBacklog(port: number, sizes: number[]): Promise<number> {
  const started = Date.now();
  const client = nodemailer.createTransport({
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    pool: true,
    maxConnections: 10,
    maxMessages: Infinity,
  });
  try {
    const body = `Benchmark message.\r\n${'x'.repeat(76)}\r\n`.repeat(20);
    await Promise.all(
      sizes.map((n, m) =>
        client.sendMail({
          envelope: {
            from: 'sender@bench.example',
            to: Array.from({ length: n }, (_, i) => `r${m}-${i}@bench.example`),
          },
          from: 'sender@bench.example',
          to: 'undisclosed-recipients:;',
          subject: `rate bench ${m}`,
          text: body,
        }),
      ),
    );
  } finally {
    client.close();
  }
  return (Date.now() - started) / 1000;
}

async function measure(rate: number, total: number, mode: BacklogMode): Promise<RateResult> {
  let ses: FakeSes | undefined;
  let relay: RelayProcess | undefined;
  try {
    ses = await startFakeSes();
    const sizes = backlogShape(total);
    let submitSeconds: number;
    let expected = total;
    if (mode === 'preloaded') {
      const loader = await startBenchRelay({ ...fakeSesEnv(ses.port), SES_RATE_LIMIT: '0.001' });
      try {
        submitSeconds = await submitBacklog(loader.smtpPort, sizes);
      } finally {
        await stopBenchRelay(loader, { keepSpool: true });
      }
      expected = total - ses.recipientsReceived();
      ses.reset();
      relay = await startBenchRelay(
        { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: String(rate) },
        loader.spoolDir,
      );
    } else {
      relay = await startBenchRelay({ ...fakeSesEnv(ses.port), SES_RATE_LIMIT: String(rate) });
      submitSeconds = await submitBacklog(relay.smtpPort, sizes);
    }
    const ready = relay.logs.find((l) => l.event === 'relay:ready') ?? {};
    const burst = Number(ready.burst ?? Math.max(1, Math.ceil(rate)));
    const timeoutMs = (total / rate) * 1500 + 60_000;
    const fake = ses;
    await fake.waitFor(() => fake.recipientsReceived() >= expected, timeoutMs);
    // Anything beyond `total` would be a duplicate: give stragglers a moment to show up.
    await new Promise((r) => setTimeout(r, 500));

    const msgs = [...fake.messages].sort((a, b) => a.at - b.at);
    const first = msgs[0];
    const last = msgs[msgs.length - 1];
    const upstreamRecipients = fake.recipientsReceived();
    const spanSeconds = (last.at - first.at) / 1000;
    const stamps = msgs.map((m) => ({ at: m.at, recipients: m.recipients.length }));
    const busiest = busiestWindow(stamps, 1000);
    return {
      mode,
      rate,
      burst,
      recipients: total,
      messages: sizes.length,
      submitSeconds,
      transactions: msgs.length,
      upstreamRecipients,
      sentWhileLoading: total - expected,
      spanSeconds,
      achieved: (upstreamRecipients - first.recipients.length) / spanSeconds,
      maxInOneSecond: Math.max(busiest.count, fake.maxRecipientsInWindow(1000)),
      maxWindowAt: (busiest.at - first.at) / 1000,
      maxInOneSecondSteady: busiestWindow(stamps, 1000, first.at + 2000).count,
      bound: rate * 1 + burst,
    };
  } finally {
    if (relay) await stopBenchRelay(relay);
    await ses?.close();
  }
}

export function rateTable(results: RateResult[]): string {
  return table(
    [
      'backlog',
      'SES_RATE_LIMIT',
      'burst',
      'recipients (messages)',
      'upstream txns',
      'drain s',
      'achieved rcpt/s',
      'achieved / limit',
      'max in any 1 s (at +s)',
      'same, from +2 s',
      'bound rate+burst',
      'upstream rcpts',
    ],
    results.map((r) => [
      r.mode,
      String(r.rate),
      String(r.burst),
      `${r.recipients} (${r.messages})`,
      String(r.transactions),
      fixed(r.spanSeconds, 1),
      fixed(r.achieved, 2),
      percent(r.achieved / r.rate, 2),
      `${r.maxInOneSecond} (+${fixed(r.maxWindowAt, 1)})`,
      String(r.maxInOneSecondSteady),
      `${r.bound}${r.maxInOneSecond <= r.bound ? ' ok' : ' EXCEEDED'}`,
      r.sentWhileLoading
        ? `${r.upstreamRecipients} + ${r.sentWhileLoading} earlier`
        : String(r.upstreamRecipients),
    ]),
  );
}

export async function main(): Promise<void> {
  const quick = quickMode();
  heading('Rate accuracy: backlog drained to a fake SES', quick);
  if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
  const rates = (process.env.BENCH_RATES ?? '14,200').split(',').map(Number);
  // Quick mode: enough recipients for ~10 s of drain beyond the initial burst at every rate.
  const backlogFor = (rate: number) =>
    Number(process.env.BENCH_RATE_RECIPIENTS ?? (quick ? Math.max(300, Math.ceil(rate * 10)) : 5000));
  console.log(
    `Backlog: ${rates.map((r) => `${backlogFor(r)} recipients at ${r}/s`).join(', ')}, in messages of ` +
      `1..50 recipients (fixed seed), submitted over 10 pooled nodemailer connections;\nfake SES accepts ` +
      `everything; timestamps = fake SES's 250 to DATA; achieved = (upstream recipients - first transaction's) / drain time.\n`,
  );
  const modes = (process.env.BENCH_RATE_MODES ?? 'live,preloaded')
    .split(',')
    .map((m) => m.trim()) as BacklogMode[];
  for (const m of modes) if (m !== 'live' && m !== 'preloaded') throw new Error(`unknown backlog mode ${m}`);
  const results: RateResult[] = [];
  for (const mode of modes) {
    for (const rate of rates) {
      const total = backlogFor(rate);
      const r = await measure(rate, total, mode);
      console.log(
        `  ${mode}, rate ${rate}: backlog of ${r.messages} messages submitted in ${fixed(r.submitSeconds, 2)} s, ` +
          `drained in ${fixed(r.spanSeconds, 1)} s`,
      );
      results.push(r);
    }
  }
  console.log('');
  console.log(rateTable(results));
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}
