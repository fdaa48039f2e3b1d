/**
 * Tenant fairness (issue 11, "Benchmark"): one SMTP user dumps a bulk backlog (20 000 single-recipient
 * messages; quick mode 2 000) while another sends a trickle of single messages (one every 500 ms, each over
 * a connection of its own), at the same time. The relay runs at SES_RATE_LIMIT = 50 against a fake SES that
 * accepts everything, so the relay's own rate is the bottleneck; two tenants = two SMTP_USERS (bcrypt).
 * Figures: the trickle's queue wait (its 250 at the relay -> the fake SES's 250 to DATA: p50, p99, max) and
 * the bulk user's throughput at the fake. The trickle runs until the bulk backlog has drained (or the run's
 * bound), so with one first-come-first-served queue its waits spread from ~0 to the whole drain time.
 *
 * When the built relay supports a per-user policy file (it mentions SMTP_USER_POLICY_FILE, issue 11), the
 * bench writes one giving the bulk user `priority: bulk` (the trickle user keeps the default, normal:
 * weights 1 and 4; override the JSON with BENCH_FAIRNESS_POLICY) and says so above the table; otherwise it
 * measures the relay as it is (each user is still a tenant of its own, both normal). The table also gives
 * the whole drain rate (bulk + trickle recipients per second at the fake SES, first to last acceptance):
 * fair shares must not cost throughput (issue 11: >= 95 % of the rate).
 *
 * Side by side, the same load through Postfix (one queue; relayhost = the fake SES over STARTTLS + AUTH,
 * bench/lib/postfix.ts). Postfix cannot be rate-delayed to 50/s: `smtp_destination_rate_delay` takes whole
 * seconds and means one delivery at a time, i.e. at most 1 message/s. So two rows:
 *   p1. no rate delay, 4 connections (`smtp_destination_concurrency_limit`), against a fake SES that
 *       enforces 50 recipients/s itself (strict bucket, 454 after DATA): SES's throttling is the brake and
 *       Postfix retries deferred mail (FAST_RETRY: every 1 s, backoff 2-4 s);
 *   p2. `smtp_destination_rate_delay = 1s`, the finest it has, bounded to a short window (the drain would
 *       take hours).
 *
 *   BENCH_ONLY=fairness npm run bench        (full: ~25 min)      BENCH_QUICK=1 ... (~3 min)
 *   env: BENCH_FAIRNESS_BULK (default 20000, quick 2000), BENCH_FAIRNESS_ROWS (default "relay,p1,p2"),
 *        BENCH_FAIRNESS_POLICY (JSON for the policy file, default {"bulk":{"priority":"bulk"}})
 */
import fs from 'node:fs';
import path from 'node:path';
import bcrypt from 'bcryptjs';
import { MAIN, ROOT, TEST_CA, fakeSesEnv, tempDir, type RelayProcess } from '../test/helpers/relay-process';
import { startFakeSes, type FakeSes } from '../test/helpers/fake-ses';
import { startBenchRelay, stopBenchRelay } from './lib/relay';
import { FAST_RETRY, postfixUnavailable, startPostfix, type PostfixInstance } from './lib/postfix';
import { submitOne, submitPooled, type BenchMessage, type SubmitOptions } from './lib/submit';
import { fixed, heading, percent, percentile, quickMode, table } from './lib/report';

const RATE = 50;
const TRICKLE_EVERY_MS = 500;
const BULK_FROM = 'bulk@bench.example';
const TRICKLE_FROM = 'trickle@bench.example';
const USERS = { bulk: 'bulk-secret', trickle: 'trickle-secret' };

interface Load {
  port: number;
  ses: FakeSes;
  bulk: number;
  bulkAuth?: SubmitOptions['auth'];
  trickleAuth?: SubmitOptions['auth'];
  /** Stop the trickle after this long even if the bulk has not drained. */
  trickleForMs: number;
  /** Give up waiting for deliveries at this time. */
  deadline: number;
}

interface Result {
  title: string;
  bulkDelivered: number;
  bulkSubmitSeconds: number;
  /** Bulk recipients accepted by SES per second, first to last bulk acceptance. */
  bulkRate: number;
  /** All recipients (bulk and trickle) accepted per second over the same span. */
  allRate: number;
  trickleSent: number;
  trickleDelivered: number;
  /** Trickle queue waits, ms; for a message not delivered by the end, the time it had waited then. */
  waits: number[];
  /** Some waits are lower bounds (messages still queued at the end). */
  waitsAreLowerBounds: boolean;
  refusedShare: number;
  drained: boolean;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const countFrom = (ses: FakeSes, from: string) => ses.messages.filter((m) => m.mailFrom === from).length;

/** Bulk and trickle at once; returns the trickle's 250 times by sequence number. */
async function runLoad(load: Load): Promise<{ sentAt: Map<number, number>; submitSeconds: number }> {
  const bulk: BenchMessage[] = Array.from({ length: load.bulk }, (_, i) => ({
    from: BULK_FROM,
    to: [`bulk-${i}@bench.example`],
    subject: `bulk ${i}`,
  }));
  const started = Date.now();
  let submitSeconds = NaN;
  const bulkDone = submitPooled(load.port, bulk, { auth: load.bulkAuth, connections: 10 }).then(() => {
    submitSeconds = (Date.now() - started) / 1000;
  });
  const sentAt = new Map<number, number>();
  const inFlight: Array<Promise<void>> = [];
  let failed = 0;
  for (let seq = 0; ; seq++) {
    const due = started + seq * TRICKLE_EVERY_MS;
    if (due - started > load.trickleForMs || due > load.deadline) break;
    if (seq > 0 && countFrom(load.ses, BULK_FROM) >= load.bulk) break; // the backlog has drained
    await sleep(Math.max(0, due - Date.now()));
    const message = { from: TRICKLE_FROM, to: [`trickle-${seq}@bench.example`], subject: `trickle ${seq}` };
    inFlight.push(
      submitOne(load.port, message, { auth: load.trickleAuth }).then(
        (at) => void sentAt.set(seq, at),
        () => void failed++,
      ),
    );
  }
  await Promise.all(inFlight);
  await bulkDone;
  if (failed) console.log(`  warning: ${failed} trickle submissions failed`);
  // Wait for what was accepted to arrive (bounded).
  while (Date.now() < load.deadline) {
    if (countFrom(load.ses, BULK_FROM) >= load.bulk && countFrom(load.ses, TRICKLE_FROM) >= sentAt.size)
      break;
    await sleep(250);
  }
  return { sentAt, submitSeconds };
}

function summarise(title: string, load: Load, run: Awaited<ReturnType<typeof runLoad>>): Result {
  const { ses } = load;
  const waits: number[] = [];
  const delivered = new Set<number>();
  const bulkAt: number[] = [];
  for (const m of ses.messages) {
    if (m.mailFrom === BULK_FROM) bulkAt.push(m.at);
    if (m.mailFrom !== TRICKLE_FROM) continue;
    const seq = /^Subject: trickle (\d+)\r?$/m.exec(m.body.toString('latin1'))?.[1];
    const sent = seq === undefined ? undefined : run.sentAt.get(Number(seq));
    if (sent !== undefined && !delivered.has(Number(seq))) {
      delivered.add(Number(seq));
      waits.push(m.at - sent);
    }
  }
  const end = Date.now();
  for (const [seq, sent] of run.sentAt) if (!delivered.has(seq)) waits.push(end - sent);
  const accepted = ses.recipientsReceived();
  const refused = ses.throttledRecipients();
  const first = Math.min(...bulkAt);
  const last = Math.max(...bulkAt);
  const span = (last - first) / 1000;
  const inSpan = ses.messages.filter((m) => m.at >= first && m.at <= last).length;
  return {
    title,
    bulkDelivered: bulkAt.length,
    bulkSubmitSeconds: run.submitSeconds,
    bulkRate: bulkAt.length > 1 ? (bulkAt.length - 1) / span : NaN,
    allRate: inSpan > 1 ? (inSpan - 1) / span : NaN,
    trickleSent: run.sentAt.size,
    trickleDelivered: delivered.size,
    waits,
    waitsAreLowerBounds: delivered.size < run.sentAt.size,
    refusedShare: refused / Math.max(1, accepted + refused),
    drained: bulkAt.length >= load.bulk && delivered.size >= run.sentAt.size,
  };
}

/** The policy variable the built relay knows, if any (issue 11: SMTP_USER_POLICY_FILE). */
function policyVariable(): string | undefined {
  const name = 'SMTP_USER_POLICY_FILE';
  const walk = (dir: string): boolean =>
    fs.readdirSync(dir, { withFileTypes: true }).some((e) => {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) return walk(p);
      return e.name.endsWith('.js') && fs.readFileSync(p, 'utf8').includes(name);
    });
  return walk(path.join(ROOT, 'dist')) ? name : undefined;
}

async function relayRow(bulk: number, deadline: number, policyDir: string): Promise<Result> {
  const ses = await startFakeSes();
  let relay: RelayProcess | undefined;
  try {
    const hash = (pw: string) => bcrypt.hashSync(pw, 4);
    const env: Record<string, string> = {
      ...fakeSesEnv(ses.port),
      SES_RATE_LIMIT: String(RATE),
      SMTP_USERS: `bulk:${hash(USERS.bulk)},trickle:${hash(USERS.trickle)}`,
      SMTP_ALLOW_INSECURE_AUTH: 'true', // loopback benchmark: AUTH without TLS
    };
    const variable = policyVariable();
    let policy = 'none (the relay has no per-user policy variable: one first-come-first-served queue)';
    if (variable) {
      const json = process.env.BENCH_FAIRNESS_POLICY ?? JSON.stringify({ bulk: { priority: 'bulk' } });
      const file = path.join(policyDir, 'user-policy.json');
      fs.writeFileSync(file, json);
      env[variable] = file;
      policy = `${variable} = ${json}`;
    }
    console.log(`  relay per-user policy: ${policy}`);
    try {
      relay = await startBenchRelay(env);
    } catch (err) {
      if (!variable) throw err;
      throw new Error(
        `the relay did not start with ${variable} (${(err as Error).message}); ` +
          'set BENCH_FAIRNESS_POLICY to the JSON it expects',
        { cause: err },
      );
    }
    const load: Load = {
      port: relay.smtpPort,
      ses,
      bulk,
      bulkAuth: { user: 'bulk', pass: USERS.bulk },
      trickleAuth: { user: 'trickle', pass: USERS.trickle },
      trickleForMs: deadline - Date.now(),
      deadline,
    };
    return summarise(`relay, SES_RATE_LIMIT=${RATE}`, load, await runLoad(load));
  } finally {
    if (relay) await stopBenchRelay(relay);
    await ses.close();
  }
}

async function postfixRow(
  title: string,
  bulk: number,
  mainCf: Record<string, string>,
  enforce: boolean,
  trickleForMs: number,
  deadline: number,
): Promise<Result> {
  const ses = await startFakeSes(enforce ? { rateLimit: { perSecond: RATE, burst: RATE } } : {});
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
      mainCf: { smtp_destination_recipient_limit: String(RATE), ...FAST_RETRY, ...mainCf },
    });
    const load: Load = { port: pf.port, ses, bulk, trickleForMs, deadline };
    return summarise(title, load, await runLoad(load));
  } finally {
    await pf?.stop();
    await ses.close();
  }
}

export function fairnessTable(rows: Result[]): string {
  const secs = (r: Result, ms: number) =>
    Number.isFinite(ms) ? `${r.waitsAreLowerBounds ? '>= ' : ''}${fixed(ms / 1000, 1)}` : 'n/a';
  return table(
    [
      'MTA, configuration',
      'bulk delivered',
      'bulk submit s',
      `bulk rcpt/s (/ ${RATE})`,
      `all rcpt/s (/ ${RATE})`,
      'trickle delivered / sent',
      'trickle wait p50 s',
      'p99 s',
      'max s',
      'refused 454',
    ],
    rows.map((r) => [
      r.title,
      `${r.bulkDelivered}${r.drained ? '' : ' (bounded)'}`,
      fixed(r.bulkSubmitSeconds, 1),
      `${fixed(r.bulkRate, 1)} (${fixed(r.bulkRate / RATE, 2)})`,
      `${fixed(r.allRate, 1)} (${fixed(r.allRate / RATE, 2)})`,
      `${r.trickleDelivered} / ${r.trickleSent}`,
      secs(r, percentile(r.waits, 50)),
      secs(r, percentile(r.waits, 99)),
      secs(r, Math.max(...r.waits)),
      percent(r.refusedShare, 2),
    ]),
  );
}

export async function main(): Promise<void> {
  const quick = quickMode();
  const bulk = Number(process.env.BENCH_FAIRNESS_BULK ?? (quick ? 2000 : 20000));
  heading(`Tenant fairness: ${bulk} bulk messages from one user, a trickle from another, ${RATE}/s`, quick);
  if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
  const rowsWanted = (process.env.BENCH_FAIRNESS_ROWS ?? 'relay,p1,p2').split(',').map((k) => k.trim());
  const noPostfix = postfixUnavailable();
  // Twice the ideal drain + 2 minutes: today's relay and Postfix both finish well within it.
  const bound = () => Date.now() + (bulk / RATE) * 2000 + 120_000;
  const shortWindow = quick ? 20_000 : 60_000;
  const policyDir = tempDir('bench-fairness-');
  const rows: Result[] = [];
  const done = (r: Result) => {
    rows.push(r);
    console.log(
      `  ${r.title}: bulk ${r.bulkDelivered}/${bulk} at ${fixed(r.bulkRate, 1)}/s, ` +
        `trickle ${r.trickleDelivered}/${r.trickleSent}, median wait ${fixed(percentile(r.waits, 50) / 1000, 1)} s`,
    );
  };
  try {
    if (rowsWanted.includes('relay')) done(await relayRow(bulk, bound(), policyDir));
    for (const key of ['p1', 'p2']) {
      if (!rowsWanted.includes(key)) continue;
      if (noPostfix) {
        console.log(`  Postfix ${key}: skipped (${noPostfix})`);
        continue;
      }
      const row =
        key === 'p1'
          ? await postfixRow(
              'p1. Postfix, 4 connections, SES enforces 50/s',
              bulk,
              { smtp_destination_concurrency_limit: '4' },
              true,
              Infinity,
              bound(),
            )
          : await postfixRow(
              'p2. Postfix, rate delay 1s',
              bulk,
              { smtp_destination_rate_delay: '1s' },
              false,
              shortWindow,
              Date.now() + shortWindow + 30_000,
            );
      done(row);
    }
  } finally {
    fs.rmSync(policyDir, { recursive: true, force: true });
  }
  console.log(
    `\nBulk: ${bulk} single-recipient messages from one user over 10 pooled connections, submitted at once; ` +
      `trickle: one message every ${TRICKLE_EVERY_MS} ms from another user, a connection each, until the bulk ` +
      `has drained. Wait = the trickle message's 250 at the MTA -> the fake SES's 250 to its DATA. ` +
      `"bounded" = stopped before everything arrived (p2 runs ${shortWindow / 1000} s; ">=": waits of ` +
      `messages still queued then count as the time they had waited). ` +
      `Bar (issue 11): a trickle message waits no more than a few seconds behind any bulk backlog.\n`,
  );
  console.log(fairnessTable(rows));
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}
