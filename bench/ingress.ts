/**
 * Durable ingress throughput: how many messages per second get their 250 (which for both servers means
 * "safely on disk") when Postfix's `smtp-source` pushes 4 KB messages over 20 concurrent sessions —
 * against the relay (built dist/main.js, upstream = fake SES at the default 14 recipients/s, so nearly the
 * whole load stays spooled) and against a private Postfix instance on the same machine in the same run
 * (mail stays queued: defer_transports = smtp). Repetitions are interleaved (relay, Postfix, Postfix,
 * relay, ...) and the median is reported, with the ratio relay / Postfix.
 *
 * Two client modes: smtp-source's default opens a new connection per message (connect, EHLO, MAIL, RCPT,
 * DATA, QUIT); with -d each session keeps its connection and sends the next message over it.
 *
 *   node --import tsx bench/ingress.ts          (npm run build first)
 *   BENCH_QUICK=1 node --import tsx bench/ingress.ts
 *   env: BENCH_INGRESS_MESSAGES (default 5000), BENCH_INGRESS_REPS (default 3)
 */
import fs from 'node:fs';
import { MAIN, fakeSesEnv, metricValue, type RelayProcess } from '../test/helpers/relay-process';
import { startBenchRelay, stopBenchRelay } from './lib/relay';
import { startFakeSes, type FakeSes } from '../test/helpers/fake-ses';
import { postfixUnavailable, startPostfix, type PostfixInstance } from './lib/postfix';
import {
  runSmtpSource,
  smtpSourceArgs,
  smtpSourceUnavailable,
  type SmtpSourceOptions,
} from './lib/smtp-source';
import { fixed, heading, median, quickMode, table } from './lib/report';

const SESSIONS = 20;
const SIZE = 4096;

interface Target {
  name: string;
  port: number;
  /** Messages durably accepted so far, to check that smtp-source's count really arrived. */
  accepted(): Promise<number>;
}

export interface IngressRow {
  mode: string;
  relay: number[];
  postfix: number[];
  /** Relay with smtp-server's built-in 100 ms greeting delay (new-connection mode only). */
  relayGreetingDelay?: number[];
}

async function timeRun(target: Target, opts: Omit<SmtpSourceOptions, 'port'>): Promise<number> {
  const before = await target.accepted();
  const r = await runSmtpSource({ ...opts, port: target.port });
  if (r.exitCode !== 0) {
    throw new Error(`smtp-source against ${target.name} exited ${r.exitCode}: ${r.output.slice(-1000)}`);
  }
  const after = await target.accepted();
  if (after - before < opts.messages) {
    // smtp-source's exit status already says every DATA got 250; this double-checks the server's count.
    console.log(
      `  warning: ${target.name}: smtp-source finished but only ${after - before} of ${opts.messages} messages are counted`,
    );
  }
  return r.messagesPerSecond;
}

function relayTarget(name: string, relay: RelayProcess): Target {
  return {
    name,
    port: relay.smtpPort,
    accepted: async () => metricValue(await relay.metrics(), 'ses_relay_messages_received_total'),
  };
}

function postfixTarget(pf: PostfixInstance): Target {
  // Postfix moves messages between queues (incoming -> active -> deferred); count after a short settle.
  return {
    name: 'postfix',
    port: pf.port,
    accepted: async () => {
      let last = -1;
      let n = pf.queuedMessages();
      for (let i = 0; i < 20 && n !== last; i++) {
        last = n;
        await new Promise((r) => setTimeout(r, 100));
        n = pf.queuedMessages();
      }
      return n;
    },
  };
}

export async function main(): Promise<void> {
  const quick = quickMode();
  heading('Durable ingress: relay vs Postfix, smtp-source -s 20 -l 4096', quick);
  const missing = smtpSourceUnavailable() ?? postfixUnavailable();
  if (missing) {
    console.log(`skipped: ${missing}`);
    return;
  }
  if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
  const messages = Number(process.env.BENCH_INGRESS_MESSAGES ?? (quick ? 400 : 5000));
  const reps = Number(process.env.BENCH_INGRESS_REPS ?? (quick ? 1 : 3));

  let ses: FakeSes | undefined;
  let relay: RelayProcess | undefined;
  let relayDelayed: RelayProcess | undefined;
  let postfix: PostfixInstance | undefined;
  try {
    ses = await startFakeSes();
    const env = { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: '14' };
    relay = await startBenchRelay({ ...env, SMTP_GREETING_DELAY: '0' });
    relayDelayed = await startBenchRelay({ ...env, SMTP_GREETING_DELAY: '100ms' });
    postfix = await startPostfix();
    const targets = {
      relay: relayTarget('relay', relay),
      relayDelayed: relayTarget('relay (greeting delay 100 ms)', relayDelayed),
      postfix: postfixTarget(postfix),
    };

    console.log(
      `${messages} messages per run, ${reps} interleaved repetitions per cell, median reported;\n` +
        `client: smtp-source ${smtpSourceArgs({ port: 0, sessions: SESSIONS, size: SIZE, messages, reuseConnection: false }).slice(0, -1).join(' ')} [-d] 127.0.0.1:<port>\n` +
        `relay: dist/main.js, spool fsync before 250, upstream fake SES at SES_RATE_LIMIT 14; ` +
        `postfix: private instance, defer_transports = smtp (mail stays queued)\n`,
    );

    // Warm-up (JIT, Postfix process pools), not measured.
    const warm = { sessions: SESSIONS, size: SIZE, messages: Math.min(200, messages) };
    for (const t of Object.values(targets)) {
      await timeRun(t, { ...warm, reuseConnection: false });
      await timeRun(t, { ...warm, reuseConnection: true });
    }

    const rows: IngressRow[] = [
      { mode: 'new connection per message', relay: [], postfix: [], relayGreetingDelay: [] },
      { mode: 'one connection per session (-d)', relay: [], postfix: [] },
    ];
    for (let rep = 0; rep < reps; rep++) {
      for (const row of rows) {
        const reuseConnection = row.mode.includes('-d');
        const opts = { sessions: SESSIONS, size: SIZE, messages, reuseConnection };
        // Alternate the order so neither server always runs on a warmer (or fuller) machine.
        const order = rep % 2 === 0 ? (['relay', 'postfix'] as const) : (['postfix', 'relay'] as const);
        for (const who of order) {
          const rate = await timeRun(targets[who], opts);
          row[who].push(rate);
          console.log(`  rep ${rep + 1} ${row.mode}: ${who} ${fixed(rate)} msgs/s`);
        }
        if (row.relayGreetingDelay) {
          const rate = await timeRun(targets.relayDelayed, opts);
          row.relayGreetingDelay.push(rate);
          console.log(`  rep ${rep + 1} ${row.mode}: relay with 100 ms greeting delay ${fixed(rate)} msgs/s`);
        }
      }
    }

    console.log('');
    console.log(
      table(
        ['client mode', 'relay msgs/s', 'postfix msgs/s', 'relay / postfix'],
        rows.map((r) => [
          r.mode,
          fixed(median(r.relay)),
          fixed(median(r.postfix)),
          fixed(median(r.relay) / median(r.postfix), 2),
        ]),
      ),
    );
    const delayed = rows[0].relayGreetingDelay ?? [];
    console.log(
      `\nFor comparison, new connection per message against the relay with SMTP_GREETING_DELAY=100ms ` +
        `(smtp-server's built-in default): ${fixed(median(delayed))} msgs/s ` +
        `(ceiling ${SESSIONS} sessions x 10 greetings/s = ${SESSIONS * 10} msgs/s).`,
    );
  } finally {
    await postfix?.stop();
    if (relay) await stopBenchRelay(relay);
    if (relayDelayed) await stopBenchRelay(relayDelayed);
    await ses?.close();
  }
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}
