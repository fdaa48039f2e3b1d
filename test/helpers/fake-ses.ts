/**
 * A fake Amazon SES SMTP endpoint for tests: a real smtp-server on 127.0.0.1 with STARTTLS (the test CA's
 * certificate), AUTH required, that records every accepted transaction and can be scripted to answer the
 * way SES does (454 Throttling failure, 421, 451, 554, 550 per recipient, dropped connections, slow replies)
 * and to enforce a recipient-counted sending rate like SES.
 *
 * The rate limit behaves as SES's SMTP interface does: SES counts recipients, not messages ("Quotas are
 * based on the number of recipients", https://docs.aws.amazon.com/ses/latest/dg/quotas.html), answers
 * `454 Throttling failure: Maximum sending rate exceeded` after the DATA command, and drops the message: it
 * must be resent (https://docs.aws.amazon.com/ses/latest/dg/manage-sending-quotas-errors.html). So the
 * fake refuses the WHOLE transaction at the end of DATA when its recipients do not all fit in the bucket
 * (a strict token bucket: a refused transaction takes no tokens; one with more recipients than `burst`
 * can never pass), and records each refusal in `refusals` with its recipient count.
 *
 *   const ses = await startFakeSes({ rateLimit: { perSecond: 14, burst: 14 } });
 *   ses.queueData(FAKE_REPLIES.throttling);          // next DATA gets 454
 *   ses.queueRcpt('bad@example.com', FAKE_REPLIES.mailboxUnavailable);
 *   await ses.waitFor(3);                            // three transactions received
 *   await ses.close();
 *
 * Clients verify the certificate with test/fixtures/tls/ca.crt (`FAKE_SES_CA`).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import { maxInWindow } from './windows';

const TLS_DIR = path.join(__dirname, '..', 'fixtures', 'tls');
/** The private CA that signed the fake's certificate: pass as `tls: { ca }` to clients. */
export const FAKE_SES_CA = fs.readFileSync(path.join(TLS_DIR, 'ca.crt'));
const SERVER_CERT = fs.readFileSync(path.join(TLS_DIR, 'server.crt'));
const SERVER_KEY = fs.readFileSync(path.join(TLS_DIR, 'server.key'));

/** A transaction the fake accepted (250 after DATA). */
export interface ReceivedMessage {
  /** ms timestamp of the final DATA acknowledgement. */
  at: number;
  mailFrom: string;
  recipients: string[];
  body: Buffer;
  /** smtp-server's connection id: messages sharing it went over one connection. */
  connectionId: string;
  /** The MAIL FROM command line of this transaction exactly as it arrived (without CRLF). */
  mailLine?: string;
  /** Every RCPT TO command line of this transaction exactly as it arrived, accepted or not. */
  rcptLines?: string[];
}

/** A transaction refused with 454 by the rate limit (see `rateLimit`). */
export interface RefusedTransaction {
  /** ms timestamp of the 454 (end of DATA). */
  at: number;
  recipients: number;
  connectionId: string;
}

/**
 * A scripted answer. `code`/`message`: reply with that (message is the full text after the code,
 * e.g. '4.7.0 Throttling failure: ...'); codes >= 400 refuse, 421 also closes the connection.
 * `drop`: destroy the TCP connection without replying (mid-DATA when used for the data phase).
 * `delayMs`: wait that long before answering (alone: a slow but successful answer).
 */
export interface FakeAnswer {
  code?: number;
  message?: string;
  drop?: boolean;
  delayMs?: number;
}

/** SES's own texts for the answers tests need. */
export const FAKE_REPLIES = {
  throttling: { code: 454, message: 'Throttling failure: Maximum sending rate exceeded.' },
  dailyQuota: { code: 454, message: 'Throttling failure: Daily message quota exceeded.' },
  serviceUnavailable: { code: 421, message: '4.4.2 Service unavailable, closing transmission channel' },
  temporaryFailure: { code: 451, message: '4.4.2 Temporary service failure' },
  messageRejected: { code: 554, message: '5.7.1 Message rejected: Email address is not verified.' },
  mailboxUnavailable: { code: 550, message: '5.1.1 Mailbox unavailable' },
  drop: { drop: true },
} as const satisfies Record<string, FakeAnswer>;

export type FakePhase = 'mail' | 'rcpt' | 'data';

export interface ScriptContext {
  phase: FakePhase;
  /** MAIL FROM or RCPT TO address (undefined for data). */
  address?: string;
  /** Envelope so far. */
  mailFrom: string;
  recipients: string[];
  connectionId: string;
}

/** Returns an answer, or undefined for the default (accept, subject to rateLimit). */
export type FakeScript = (ctx: ScriptContext) => FakeAnswer | undefined;

export interface FakeSesOptions {
  username?: string;
  password?: string;
  /** Implicit TLS (like SES on 465) instead of STARTTLS. */
  implicitTls?: boolean;
  /** Enforce SES's sending rate: recipients per second with a bucket of `burst` recipients. */
  rateLimit?: { perSecond: number; burst: number };
  /** Log smtp-server's protocol chatter to the console (default false). */
  logger?: boolean;
  /** Max message size advertised and enforced (default 40 MB like SES). */
  size?: number;
}

export interface FakeSes {
  port: number;
  host: string;
  username: string;
  password: string;
  /** Accepted transactions, in order of acceptance. */
  readonly messages: ReceivedMessage[];
  /** Transactions refused with 454 by the rate limit. */
  readonly throttledCount: number;
  /** The same refusals, in order, with their recipient counts (the whole transaction is refused). */
  readonly refusals: RefusedTransaction[];
  /** Recipients in transactions refused by the rate limit (a recipient refused twice counts twice). */
  throttledRecipients(): number;
  /** Connections ever accepted / open now. */
  readonly connectionsOpened: number;
  readonly connectionsOpen: number;
  /** Successful AUTH exchanges. */
  readonly authCount: number;
  /** Total recipients accepted. */
  recipientsReceived(): number;
  /** Largest number of recipients accepted within any window [t, t + ms). */
  maxRecipientsInWindow(ms: number): number;
  /** Resolve when `predicate(messages)` holds or `count` messages arrived; reject after timeoutMs. */
  waitFor(what: number | ((messages: ReceivedMessage[]) => boolean), timeoutMs?: number): Promise<void>;
  /** Replace the script function (undefined to remove). Queued answers are consulted first. */
  script(fn: FakeScript | undefined): void;
  /** Answers for the next RCPT TO of `address` (one consumed per RCPT). */
  queueRcpt(address: string, ...answers: FakeAnswer[]): void;
  /** Answers for the next MAIL FROM commands. */
  queueMail(...answers: FakeAnswer[]): void;
  /** Answers for the next DATA ends (after the body was read). */
  queueData(...answers: FakeAnswer[]): void;
  /** Forget received messages and counters (not the scripts). */
  reset(): void;
  close(): Promise<void>;
}

function answerError(a: FakeAnswer): Error & { responseCode: number } {
  const err = new Error(a.message ?? 'Error') as Error & { responseCode: number };
  err.responseCode = a.code ?? 451;
  return err;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function startFakeSes(options: FakeSesOptions = {}): Promise<FakeSes> {
  const username = options.username ?? 'AKIAFAKE';
  const password = options.password ?? 'fake-secret';
  const messages: ReceivedMessage[] = [];
  const refusals: RefusedTransaction[] = [];
  const rcptQueues = new Map<string, FakeAnswer[]>();
  const mailQueue: FakeAnswer[] = [];
  const dataQueue: FakeAnswer[] = [];
  let scriptFn: FakeScript | undefined;
  let throttledCount = 0;
  let connectionsOpened = 0;
  let connectionsOpen = 0;
  let authCount = 0;
  const waiters = new Set<() => void>();
  // The command lines of the transaction in progress, per connection, exactly as received: smtp-server
  // parses MAIL/RCPT arguments (strips source routes, converts domains to Unicode), so tests that check
  // what goes upstream byte for byte read the lines from its command log instead.
  const lines = new Map<string, { mail: string; rcpt: string[] }>();
  const console_ = options.logger ? console : undefined;
  const commandLogger = {
    debug(entry: { tnx?: string; cid?: string }, message: string, ...args: unknown[]) {
      if (entry?.tnx === 'command' && message === 'C:' && entry.cid) {
        const line = String(args[0] ?? '');
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'MAIL') lines.set(entry.cid, { mail: line, rcpt: [] });
        else if (verb === 'RCPT') lines.get(entry.cid)?.rcpt.push(line);
        else if (verb === 'RSET') lines.delete(entry.cid);
      }
      console_?.debug(message, ...args);
    },
    info: (_e: unknown, ...args: unknown[]) => console_?.info(...args),
    warn: (_e: unknown, ...args: unknown[]) => console_?.warn(...args),
    error: (_e: unknown, ...args: unknown[]) => console_?.error(...args),
  };

  // SES-like token bucket in recipients.
  const rl = options.rateLimit;
  let tokens = rl ? rl.burst : 0;
  let tokensAt = Date.now();
  function takeTokens(n: number): boolean {
    if (!rl) return true;
    const now = Date.now();
    tokens = Math.min(rl.burst, tokens + ((now - tokensAt) / 1000) * rl.perSecond);
    tokensAt = now;
    if (tokens + 1e-9 < n) return false;
    tokens -= n;
    return true;
  }

  function pick(ctx: ScriptContext): FakeAnswer | undefined {
    if (ctx.phase === 'rcpt' && ctx.address) {
      const q = rcptQueues.get(ctx.address.toLowerCase());
      if (q && q.length) return q.shift();
    }
    if (ctx.phase === 'mail' && mailQueue.length) return mailQueue.shift();
    if (ctx.phase === 'data' && dataQueue.length) return dataQueue.shift();
    return scriptFn?.(ctx);
  }

  function dropConnection(connectionId: string): void {
    const conns = (server as unknown as { connections: Set<{ id: string; _socket?: { destroy(): void } }> })
      .connections;
    for (const c of conns) if (c.id === connectionId) c._socket?.destroy();
  }

  /** Apply an answer; resolves true when the caller should proceed with the default. */
  async function apply(a: FakeAnswer | undefined, connectionId: string): Promise<Error | 'drop' | null> {
    if (!a) return null;
    if (a.delayMs) await sleep(a.delayMs);
    if (a.drop) {
      dropConnection(connectionId);
      return 'drop';
    }
    if (a.code && a.code >= 400) return answerError(a);
    return null;
  }

  const ctxOf = (session: SMTPServerSession, phase: FakePhase, address?: string): ScriptContext => ({
    phase,
    address,
    mailFrom: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
    recipients: session.envelope.rcptTo.map((r) => r.address),
    connectionId: session.id,
  });

  const server: SMTPServer = new SMTPServer({
    secure: options.implicitTls ?? false,
    key: SERVER_KEY,
    cert: SERVER_CERT,
    name: 'fake-ses.test',
    banner: 'Fake SES',
    authMethods: ['PLAIN', 'LOGIN'],
    authOptional: false,
    allowInsecureAuth: false,
    hideENHANCEDSTATUSCODES: true,
    size: options.size ?? 40 * 1024 * 1024,
    logger: commandLogger,
    disableReverseLookup: true,
    closeTimeout: 200,
    onConnect(_session, cb) {
      connectionsOpened++;
      connectionsOpen++;
      cb();
    },
    onClose(session) {
      lines.delete(session.id);
      connectionsOpen--;
    },
    onAuth(auth, _session, cb) {
      if (auth.username === username && auth.password === password) {
        authCount++;
        return cb(null, { user: username });
      }
      const err = answerError({ code: 535, message: 'Authentication Credentials Invalid' });
      return cb(err);
    },
    onMailFrom(address, session, cb) {
      apply(pick(ctxOf(session, 'mail', address.address)), session.id).then(
        (r) => (r === 'drop' ? undefined : cb(r ?? undefined)),
        (e) => cb(e),
      );
    },
    onRcptTo(address, session, cb) {
      apply(pick(ctxOf(session, 'rcpt', address.address)), session.id).then(
        (r) => (r === 'drop' ? undefined : cb(r ?? undefined)),
        (e) => cb(e),
      );
    },
    onData(stream: Readable, session, cb) {
      const ctx = ctxOf(session, 'data');
      const answer = pick(ctx);
      const chunks: Buffer[] = [];
      let received = 0;
      stream.on('data', (c: Buffer) => {
        chunks.push(c);
        received += c.length;
        // Drop mid-DATA: after the first chunk, while the client is still sending.
        if (answer?.drop && received > 0) {
          stream.removeAllListeners('data');
          stream.resume();
          dropConnection(session.id);
        }
      });
      stream.on('end', () => {
        if (answer?.drop) return;
        apply(answer, session.id).then(
          (r) => {
            if (r === 'drop') return;
            if (r) return cb(r);
            const sizeExceeded = (stream as Readable & { sizeExceeded?: boolean }).sizeExceeded;
            if (sizeExceeded) return cb(answerError({ code: 552, message: 'Message too large' }));
            if (!takeTokens(ctx.recipients.length)) {
              throttledCount++;
              refusals.push({ at: Date.now(), recipients: ctx.recipients.length, connectionId: session.id });
              return cb(answerError(FAKE_REPLIES.throttling));
            }
            const received = lines.get(session.id);
            lines.delete(session.id);
            messages.push({
              at: Date.now(),
              mailFrom: ctx.mailFrom,
              recipients: ctx.recipients,
              body: Buffer.concat(chunks),
              connectionId: session.id,
              mailLine: received?.mail ?? '',
              rcptLines: received?.rcpt ?? [],
            });
            cb(null, 'Ok ' + `fake-${messages.length}`);
            for (const w of [...waiters]) w();
          },
          (e) => cb(e),
        );
      });
    },
  });
  server.on('error', () => {
    /* client errors (resets) are expected in tests */
  });

  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.server.address() as AddressInfo).port;

  const fake: FakeSes = {
    port,
    host: '127.0.0.1',
    username,
    password,
    messages,
    refusals,
    get throttledCount() {
      return throttledCount;
    },
    throttledRecipients: () => refusals.reduce((n, r) => n + r.recipients, 0),
    get connectionsOpened() {
      return connectionsOpened;
    },
    get connectionsOpen() {
      return connectionsOpen;
    },
    get authCount() {
      return authCount;
    },
    recipientsReceived: () => messages.reduce((n, m) => n + m.recipients.length, 0),
    maxRecipientsInWindow: (ms: number) =>
      maxInWindow(
        messages.map((m) => ({ at: m.at, n: m.recipients.length })),
        ms,
      ),
    waitFor(what, timeoutMs = 10_000) {
      const done = typeof what === 'number' ? () => messages.length >= what : () => what(messages);
      if (done()) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const check = () => {
          if (!done()) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(
            new Error(`fake SES: condition not met within ${timeoutMs} ms (${messages.length} messages)`),
          );
        }, timeoutMs);
        waiters.add(check);
      });
    },
    script(fn) {
      scriptFn = fn;
    },
    queueRcpt(address, ...answers) {
      const key = address.toLowerCase();
      rcptQueues.set(key, [...(rcptQueues.get(key) ?? []), ...answers]);
    },
    queueMail(...answers) {
      mailQueue.push(...answers);
    },
    queueData(...answers) {
      dataQueue.push(...answers);
    },
    reset() {
      messages.length = 0;
      refusals.length = 0;
      throttledCount = 0;
      connectionsOpened = 0;
      authCount = 0;
      if (rl) {
        tokens = rl.burst;
        tokensAt = Date.now();
      }
    },
    close() {
      return new Promise<void>((resolve) => {
        const conns = (server as unknown as { connections: Set<{ _socket?: { destroy(): void } }> })
          .connections;
        for (const c of conns) c._socket?.destroy();
        server.close(() => resolve());
      });
    },
  };
  return fake;
}
