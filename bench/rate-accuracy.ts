/**
 * Rate accuracy: a backlog of recipients (default 5000, in messages of 1..50 recipients drawn from a fixed
 * seed) is submitted to the relay (built dist/main.js) as fast as a pooled nodemailer client can, and the
 * relay drains it to a fake SES that accepts everything (no rate limit of its own, so what we measure is the
 * relay's limiter). Per SES_RATE_LIMIT (14 and 200 recipients/s):
 *
 * - achieved rate = recipients accepted upstream after the first acceptance / (last - first acceptance);
 *   reported as a fraction of the limit (the relay must drain at >= 98 %);
 * - the most recipients accepted upstream in any 1-second window (sliding, on the fake SES's acceptance
 *   timestamps) against the bound rate x 1 s + burst;
 * - total recipients upstream (more than submitted would mean duplicates).
 *
 * Ingress is far faster than either rate, so the backlog is in the spool long before it drains; the
 * measurement runs from the first upstream acceptance to the last.
 *
 *   node --import tsx bench/rate-accuracy.ts          (npm run build first; ~7 minutes)
 *   BENCH_QUICK=1 node --import tsx bench/rate-accuracy.ts     (300 recipients, ~25 s)
 *   env: BENCH_RATE_RECIPIENTS (default 5000), BENCH_RATES (default "14,200")
 */
import fs from 'node:fs';
import nodemailer from 'nodemailer';
import {
  MAIN,
  fakeSesEnv,
  startRelayProcess,
  stopRelayProcess,
  type RelayProcess,
} from '../test/helpers/relay-process';
import { startFakeSes, type FakeSes } from '../test/helpers/fake-ses';
import { fixed, heading, percent, quickMode, seededRandom, table } from './lib/report';

export interface RateResult {
  rate: number;
  burst: number;
  recipients: number;
  messages: number;
  submitSeconds: number;
  transactions: number;
  upstreamRecipients: number;
  spanSeconds: number;
  achieved: number;
  maxInOneSecond: number;
  bound: number;
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

async function measure(rate: number, total: number): Promise<RateResult> {
  let ses: FakeSes | undefined;
  let relay: RelayProcess | undefined;
  try {
    ses = await startFakeSes();
    relay = await startRelayProcess({ env: { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: String(rate) } });
    const ready = relay.logs.find((l) => l.event === 'relay:ready') ?? {};
    const burst = Number(ready.burst ?? Math.max(1, Math.ceil(rate)));
    const sizes = backlogShape(total);
    const submitSeconds = await submitBacklog(relay.smtpPort, sizes);
    const timeoutMs = (total / rate) * 1500 + 60_000;
    const fake = ses;
    await fake.waitFor(() => fake.recipientsReceived() >= total, timeoutMs);
    // Anything beyond `total` would be a duplicate: give stragglers a moment to show up.
    await new Promise((r) => setTimeout(r, 500));

    const msgs = [...fake.messages].sort((a, b) => a.at - b.at);
    const first = msgs[0];
    const last = msgs[msgs.length - 1];
    const upstreamRecipients = fake.recipientsReceived();
    const spanSeconds = (last.at - first.at) / 1000;
    return {
      rate,
      burst,
      recipients: total,
      messages: sizes.length,
      submitSeconds,
      transactions: msgs.length,
      upstreamRecipients,
      spanSeconds,
      achieved: (upstreamRecipients - first.recipients.length) / spanSeconds,
      maxInOneSecond: fake.maxRecipientsInWindow(1000),
      bound: rate * 1 + burst,
    };
  } finally {
    if (relay) {
      await stopRelayProcess(relay);
      fs.rmSync(relay.spoolDir, { recursive: true, force: true });
    }
    await ses?.close();
  }
}

export function rateTable(results: RateResult[]): string {
  return table(
    [
      'SES_RATE_LIMIT',
      'burst',
      'recipients (messages)',
      'upstream txns',
      'drain s',
      'achieved rcpt/s',
      'achieved / limit',
      'max in any 1 s',
      'bound rate+burst',
      'upstream rcpts',
    ],
    results.map((r) => [
      String(r.rate),
      String(r.burst),
      `${r.recipients} (${r.messages})`,
      String(r.transactions),
      fixed(r.spanSeconds, 1),
      fixed(r.achieved, 2),
      percent(r.achieved / r.rate, 2),
      String(r.maxInOneSecond),
      `${r.bound}${r.maxInOneSecond <= r.bound ? ' ok' : ' EXCEEDED'}`,
      String(r.upstreamRecipients),
    ]),
  );
}

export async function main(): Promise<void> {
  const quick = quickMode();
  heading('Rate accuracy: backlog drained to a fake SES', quick);
  if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
  const total = Number(process.env.BENCH_RATE_RECIPIENTS ?? (quick ? 300 : 5000));
  const rates = (process.env.BENCH_RATES ?? '14,200').split(',').map(Number);
  console.log(
    `${total} recipients in messages of 1..50 recipients (fixed seed), submitted over 10 pooled ` +
      `nodemailer connections; fake SES accepts everything; timestamps = fake SES's 250 to DATA.\n`,
  );
  const results: RateResult[] = [];
  for (const rate of rates) {
    const r = await measure(rate, total);
    console.log(
      `  rate ${rate}: backlog of ${r.messages} messages submitted in ${fixed(r.submitSeconds, 2)} s, ` +
        `drained in ${fixed(r.spanSeconds, 1)} s`,
    );
    results.push(r);
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
