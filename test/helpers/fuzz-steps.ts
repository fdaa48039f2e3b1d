/**
 * What every protocol-fuzz session is given (FuzzContext) and the steps they share: greet, EHLO (and
 * STARTTLS in the TLS phase), a valid AUTH, one mail transaction whose message carries a unique token.
 *
 * Tokens are how the fuzzer proves that nothing from an unauthenticated session reaches SES: every message
 * a session writes carries `X-Fuzz-Token: <token>` as its first header, and the token's state says what may
 * become of it (see TokenState).
 */
import type { FuzzConnection } from './fuzz-connection';
import type { Rng } from './fuzz-random';
import type { SmtpReply } from './smtp-client';

/**
 * - acked: an authenticated transaction got 250 queued: must reach SES exactly once, envelope as accepted.
 * - maybe: an authenticated transaction whose answer we did not wait for: at most once.
 * - aborted: an authenticated transaction that was refused or cut off: never.
 * - unauth: written by a session that never authenticated: never, not even inside another message.
 * - smuggled: a second message hidden in an authenticated body: only inside that body, never as a message.
 */
export type TokenState = 'pending' | 'acked' | 'maybe' | 'aborted' | 'unauth' | 'smuggled';

/** The envelope an acknowledged message must have upstream. `odd`: it used unusual address syntax. */
export interface ExpectedEnvelope {
  mailFrom: string;
  recipients: string[];
  odd: boolean;
  queueId?: string;
}

export type Role = 'client' | 'attacker';

export interface FuzzContext {
  readonly index: number;
  readonly rng: Rng;
  /** TLS phase: every session goes through STARTTLS first. */
  readonly tls: boolean;
  readonly ca: Buffer;
  readonly user: string;
  readonly password: string;
  /**
   * A connection as the legitimate client (127.0.0.1, valid credentials only) or as an attacker (another
   * 127/8 address, never valid credentials: a 235, 354 or "queued" it receives is a violation).
   */
  open(role: Role): Promise<FuzzConnection | undefined>;
  token(state: TokenState): string;
  settle(token: string, state: TokenState, expected?: ExpectedEnvelope): void;
  /** An invariant broke (a failing assertion at the end, with the session number to replay it). */
  violation(problem: string): void;
  /** Something worth counting in the figures (not a failure). */
  note(what: string): void;
}

export const VALID_FROM = 'fuzz-sender@example.com';

export const b64 = (s: string | Buffer): string =>
  (typeof s === 'string' ? Buffer.from(s, 'latin1') : s).toString('base64');

export function describe(r: SmtpReply | undefined): string {
  return r ? JSON.stringify(r.text.slice(0, 160)) : 'nothing';
}

/** A message whose first header names its token. */
export function message(token: string, body = 'fuzz body'): string {
  return (
    `X-Fuzz-Token: ${token}\r\nFrom: <${VALID_FROM}>\r\nTo: <rcpt@example.net>\r\n` +
    `Subject: fuzz ${token}\r\n\r\n${body}\r\n`
  );
}

/** RFC 5321 section 4.5.2 transparency: a line starting with "." gets a second one. */
export function dotStuff(text: string): string {
  return text.replace(/(^|\r\n)\./g, '$1..');
}

export function randomRecipient(ctx: FuzzContext): string {
  return `r${ctx.rng.int(0, 9999)}@example.${ctx.rng.pick(['net', 'org', 'com'])}`;
}

/** Reads the greeting; false when there is none (counted, not a violation when it is a 421). */
export async function greet(ctx: FuzzContext, c: FuzzConnection): Promise<boolean> {
  const g = await c.read();
  if (g?.code === 220) return true;
  if (g?.code === 421) ctx.note('greeting 421');
  else ctx.violation(`greeting: ${describe(g)}`);
  return false;
}

/** The greeting, and in the TLS phase EHLO + STARTTLS (the session then speaks first inside TLS). */
export async function opening(ctx: FuzzContext, c: FuzzConnection): Promise<boolean> {
  if (!(await greet(ctx, c))) return false;
  if (!ctx.tls) return true;
  const [ehlo, starttls] = [await c.command('EHLO fuzz.test'), await c.command('STARTTLS')];
  if (ehlo?.code === 250 && starttls?.code === 220 && (await c.startTls(ctx.ca))) return true;
  ctx.violation(`EHLO + STARTTLS: ${describe(ehlo)} ${describe(starttls)}`);
  return false;
}

/** EHLO, and in the TLS phase STARTTLS + EHLO again. */
export async function hello(ctx: FuzzContext, c: FuzzConnection, name = 'fuzz.test'): Promise<boolean> {
  const r = await c.command(`EHLO ${name}`);
  if (r?.code !== 250) {
    ctx.violation(`EHLO ${name.slice(0, 40)}: ${describe(r)}`);
    return false;
  }
  if (!ctx.tls) return true;
  const s = await c.command('STARTTLS');
  if (s?.code !== 220) {
    ctx.violation(`STARTTLS: ${describe(s)}`);
    return false;
  }
  if (!(await c.startTls(ctx.ca))) {
    ctx.violation('STARTTLS handshake failed');
    return false;
  }
  const again = await c.command(`EHLO ${name}`);
  if (again?.code !== 250) {
    ctx.violation(`EHLO after STARTTLS: ${describe(again)}`);
    return false;
  }
  return true;
}

/** Connect, greeting, EHLO (+ STARTTLS in the TLS phase). */
export async function session(ctx: FuzzContext, role: Role): Promise<FuzzConnection | undefined> {
  const c = await ctx.open(role);
  if (!c) {
    ctx.violation('connect failed');
    return undefined;
  }
  if (!(await greet(ctx, c)) || !(await hello(ctx, c))) return undefined;
  return c;
}

/** A valid AUTH (PLAIN with or without initial response, or LOGIN); a refusal is a violation. */
export async function login(ctx: FuzzContext, c: FuzzConnection): Promise<boolean> {
  const { user, password } = ctx;
  const how = ctx.rng.pick(['plain-ir', 'plain', 'login'] as const);
  let r: SmtpReply | undefined;
  if (how === 'plain-ir') {
    r = await c.command(`AUTH PLAIN ${b64(`\0${user}\0${password}`)}`);
  } else if (how === 'plain') {
    r = await c.command('AUTH PLAIN');
    if (r?.code === 334) r = await c.command(b64(`\0${user}\0${password}`));
  } else {
    r = await c.command('AUTH LOGIN');
    if (r?.code === 334) r = await c.command(b64(user));
    if (r?.code === 334) r = await c.command(b64(password));
  }
  if (r?.code === 235) return true;
  ctx.violation(`valid AUTH ${how}: ${describe(r)}`);
  return false;
}

export interface TransactionOptions {
  from?: string;
  recipients?: string[];
  /** Message text after the headers (dot-stuffed here unless `raw`). */
  body?: string;
  /** Write exactly this after DATA's 354 (must end with the terminator, or not, as the test wants). */
  raw?: (token: string) => string | Promise<string>;
  /** The message is deliberately incomplete: its token is aborted and no answer is awaited. */
  cutOff?: boolean;
  mailParams?: string;
  /** Anything but 250 at each step is a violation. */
  mustSucceed: boolean;
  odd?: boolean;
  /** Pipeline MAIL, RCPTs and DATA in one write (RFC 2920). */
  pipelined?: boolean;
}

/** One transaction in an authenticated session; settles its token from the replies. */
export async function transaction(ctx: FuzzContext, c: FuzzConnection, o: TransactionOptions): Promise<void> {
  const token = ctx.token('pending');
  const from = o.from ?? VALID_FROM;
  const rcpts = o.recipients ?? [randomRecipient(ctx)];
  const fail = (what: string, r: SmtpReply | undefined): void => {
    ctx.settle(token, 'aborted');
    if (o.mustSucceed) ctx.violation(`${what}: ${describe(r)}`);
  };
  const mail = `MAIL FROM:<${from}>${o.mailParams ? ` ${o.mailParams}` : ''}`;
  const replies: Array<SmtpReply | undefined> = [];
  if (o.pipelined) {
    const lines = [mail, ...rcpts.map((a) => `RCPT TO:<${a}>`), 'DATA'];
    c.write(lines.map((l) => `${l}\r\n`).join(''));
    for (let i = 0; i < lines.length; i++) {
      replies.push(await c.read());
      if (!replies[i]) break;
    }
  } else {
    replies.push(await c.command(mail));
    for (const a of replies[0]?.code === 250 ? rcpts : []) {
      replies.push(await c.command(`RCPT TO:<${a}>`));
      if (!replies.at(-1)) break;
    }
    if (replies.slice(1).some((r) => r?.code === 250)) replies.push(await c.command('DATA'));
  }
  const accepted = rcpts.filter((_, i) => replies[i + 1]?.code === 250);
  const dataReply = replies[rcpts.length + 1];
  if (dataReply?.code === 354 && (replies[0]?.code !== 250 || !accepted.length)) {
    ctx.violation(`354 to DATA without a sender and a recipient: ${describe(replies[0])}`);
    c.destroy();
  }
  if (replies[0]?.code !== 250) return fail('MAIL FROM', replies[0]);
  if (accepted.length < rcpts.length && o.mustSucceed)
    ctx.violation(`RCPT: ${describe(replies.slice(1).find((r) => r?.code !== 250))}`);
  if (!accepted.length) return ctx.settle(token, 'aborted');
  if (dataReply?.code !== 354) return fail('DATA', dataReply);
  c.write(o.raw ? await o.raw(token) : `${dotStuff(message(token, o.body))}.\r\n`);
  if (o.cutOff) return ctx.settle(token, 'aborted');
  const end = await c.read(30_000);
  if (end?.code === 250 && /queued as/.test(end.text)) {
    const queueId = /queued as (\S+)/.exec(end.text)?.[1];
    ctx.settle(token, 'acked', { mailFrom: from, recipients: accepted, odd: !!o.odd, queueId });
  } else if (!end) {
    ctx.settle(token, 'maybe');
    if (o.mustSucceed || !c.closed) ctx.violation(`no answer to end of DATA (closed: ${c.closed})`);
  } else {
    fail('end of DATA', end);
  }
}

/** QUIT must be answered 221 (unless the server already closed). */
export async function quit(ctx: FuzzContext, c: FuzzConnection): Promise<void> {
  if (c.closed) return;
  const r = await c.command('QUIT');
  if (r && r.code !== 221)
    ctx.violation(`QUIT answered ${describe(r)} (an earlier command was answered twice?)`);
  if (!r && !c.closed) ctx.violation('no answer to QUIT');
}

/**
 * QUIT after a burst whose replies were not all counted: read until the 221 or the close (bounded); a
 * connection that neither answers nor closes is a violation.
 */
export async function quitAfterBurst(ctx: FuzzContext, c: FuzzConnection): Promise<void> {
  c.write('QUIT\r\n');
  for (const deadline = Date.now() + 15_000; !c.closed && Date.now() < deadline;) {
    const r = await c.read(Math.max(1, deadline - Date.now()));
    if (r?.code === 221) return;
  }
  if (!c.closed) ctx.violation('QUIT after a burst: neither 221 nor a close within 15 s');
}

/** Sends each line and checks a reply comes; returns the replies (undefined where none came). */
export async function commands(
  ctx: FuzzContext,
  c: FuzzConnection,
  lines: Array<string | Buffer>,
): Promise<Array<SmtpReply | undefined>> {
  const out: Array<SmtpReply | undefined> = [];
  for (const line of lines) {
    if (c.closed) break;
    const r = await c.command(line);
    if (!r && !c.closed)
      ctx.violation(`no reply to ${JSON.stringify(Buffer.from(line).toString('latin1').slice(0, 60))}`);
    out.push(r);
  }
  return out;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
