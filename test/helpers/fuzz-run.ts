/**
 * The bookkeeping of a protocol-fuzz run: runs sessions of random kinds with a bounded number in flight,
 * each with its own seeded generator and a hard time limit; counts kinds and reply codes; keeps every token
 * and its state; collects violations and malformed replies with the session number (replay one session with
 * FUZZ_SEED and the number); and judges what the fake SES received against the tokens.
 */
import { domainToASCII } from 'node:url';
import { FuzzConnection } from './fuzz-connection';
import { Rng } from './fuzz-random';
import type { ExpectedEnvelope, FuzzContext, Role, TokenState } from './fuzz-steps';
import { SESSIONS, type SessionKind } from './fuzz-sessions';
import type { ReceivedMessage } from './fake-ses';

export interface FuzzRunOptions {
  seed: number;
  port: number;
  ca: Buffer;
  user: string;
  password: string;
  concurrency: number;
  /** A session still running after this long is a violation (a hang) and is cut off. */
  sessionTimeoutMs: number;
  /** Run only these session numbers (replaying findings); the others are skipped. */
  only?: ReadonlySet<number>;
  /** The relay's SMTP_MAX_MESSAGE_SIZE: nothing bigger may reach SES. */
  maxMessageSize: number;
}

export interface Finding {
  session: number;
  kind: string;
  problem: string;
}

interface TokenRecord {
  state: TokenState;
  session: number;
  kind: string;
  expected?: ExpectedEnvelope;
}

/** What SES received, judged against the tokens. Every list should be empty. */
export interface SesVerdict {
  /** Messages with no X-Fuzz-Token header, or one the fuzzer never wrote. */
  unidentified: string[];
  /** Tokens of unauthenticated sessions found anywhere in anything SES received. */
  unauthLeaks: Finding[];
  /** Messages whose token was aborted or smuggled (a cut-off or hidden message became a message). */
  forbidden: Finding[];
  duplicates: Finding[];
  /** Acknowledged messages that never arrived. */
  missing: Finding[];
  /**
   * Envelope upstream differs from the accepted one (plain addresses / odd address syntax; an acknowledged
   * message with odd addresses that never arrived counts as odd too: SES refused what the relay accepted).
   */
  envelopeMismatches: Finding[];
  oddEnvelopeMismatches: Finding[];
  /** Messages SES received that are bigger than the relay's size limit. */
  oversized: Finding[];
}

const TOKEN_HEADER = /^X-Fuzz-Token: (\S+)/m;

export class FuzzRun {
  readonly kinds = new Map<string, number>();
  readonly replyCodes = new Map<number, number>();
  readonly violations: Finding[] = [];
  readonly malformed = new Map<string, Finding & { count: number; line: string }>();
  readonly notes = new Map<string, number>();
  readonly tokens = new Map<string, TokenRecord>();
  sessions = 0;
  private nextIndex = 0;
  private readonly tokenPrefix: string;

  constructor(private readonly options: FuzzRunOptions) {
    this.tokenPrefix = `fz${(options.seed >>> 0).toString(16)}`;
  }

  /** Runs `count` sessions, kinds drawn with `weights`; `tls(rng)` says whether a session uses STARTTLS. */
  async phase(
    name: string,
    count: number,
    weights: Record<SessionKind, number>,
    tls: (rng: Rng) => boolean,
  ): Promise<void> {
    const end = this.nextIndex + count;
    const worker = async (): Promise<void> => {
      while (this.nextIndex < end) await this.runSession(this.nextIndex++, name, weights, tls);
    };
    await Promise.all(Array.from({ length: this.options.concurrency }, worker));
  }

  private async runSession(
    index: number,
    phase: string,
    weights: Record<SessionKind, number>,
    tls: (rng: Rng) => boolean,
  ): Promise<void> {
    if (this.options.only && !this.options.only.has(index)) return;
    const rng = Rng.forSession(this.options.seed, index);
    const kind = rng.weighted(weights);
    const useTls = tls(rng);
    const label = `${kind}${useTls ? '+tls' : ''}`;
    this.count(this.kinds, `${phase} ${label}`);
    this.sessions++;
    const connections: FuzzConnection[] = [];
    const ctx = this.context(index, label, rng, useTls, connections);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.options.sessionTimeoutMs);
    });
    const outcome = await Promise.race([
      SESSIONS[kind](ctx).then(
        () => 'done' as const,
        (err: unknown) => {
          ctx.violation(`session threw: ${err instanceof Error ? err.stack : String(err)}`);
          return 'done' as const;
        },
      ),
      timedOut,
    ]);
    clearTimeout(timer);
    if (outcome === 'timeout')
      ctx.violation(`still running after ${this.options.sessionTimeoutMs} ms (a hang)`);
    for (const c of connections) c.destroy();
  }

  private context(
    index: number,
    kind: string,
    rng: Rng,
    tls: boolean,
    connections: FuzzConnection[],
  ): FuzzContext {
    let tokens = 0;
    const ctx: FuzzContext = {
      index,
      rng,
      tls,
      ca: this.options.ca,
      user: this.options.user,
      password: this.options.password,
      open: async (role: Role) => {
        const c = await FuzzConnection.open({
          port: this.options.port,
          localAddress: role === 'client' ? '127.0.0.1' : attackerAddress(rng),
          onReply: (r) => {
            this.count(this.replyCodes, r.code);
            if (role === 'attacker' && (r.code === 235 || r.code === 354 || /queued as/.test(r.text)))
              ctx.violation(`unauthenticated session got ${JSON.stringify(r.text.slice(0, 80))}`);
          },
          onMalformed: (problem, line) => {
            const seen = this.malformed.get(problem);
            if (seen) seen.count++;
            else this.malformed.set(problem, { session: index, kind, problem, line, count: 1 });
          },
        });
        if (c) connections.push(c);
        return c;
      },
      token: (state) => {
        const token = `${this.tokenPrefix}-${index}-${tokens++}`;
        this.tokens.set(token, { state, session: index, kind });
        return token;
      },
      settle: (token, state, expected) => {
        const t = this.tokens.get(token);
        if (t) Object.assign(t, { state, expected });
      },
      violation: (problem) => void this.violations.push({ session: index, kind, problem }),
      note: (what) => this.count(this.notes, what),
    };
    return ctx;
  }

  private count<K>(map: Map<K, number>, key: K): void {
    map.set(key, (map.get(key) ?? 0) + 1);
  }

  /** Tokens whose message must arrive at SES. */
  acknowledged(): string[] {
    return [...this.tokens].filter(([, t]) => t.state === 'acked').map(([k]) => k);
  }

  tokenStates(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const t of this.tokens.values()) out[t.state] = (out[t.state] ?? 0) + 1;
    return out;
  }

  judge(messages: readonly ReceivedMessage[]): SesVerdict {
    const v: SesVerdict = {
      unidentified: [],
      unauthLeaks: [],
      forbidden: [],
      duplicates: [],
      missing: [],
      envelopeMismatches: [],
      oddEnvelopeMismatches: [],
      oversized: [],
    };
    const arrived = new Map<string, number>();
    const anyToken = new RegExp(`${this.tokenPrefix}-\\d+-\\d+`, 'g');
    const finding = (t: TokenRecord, problem: string): Finding => ({
      session: t.session,
      kind: t.kind,
      problem,
    });
    for (const m of messages) {
      const text = m.body.toString('latin1');
      for (const found of text.match(anyToken) ?? []) {
        const t = this.tokens.get(found);
        if (t?.state === 'unauth') v.unauthLeaks.push(finding(t, `token ${found} reached SES`));
      }
      const headerEnd = text.indexOf('\r\n\r\n');
      const token = TOKEN_HEADER.exec(headerEnd < 0 ? text : text.slice(0, headerEnd))?.[1];
      const t = token ? this.tokens.get(token) : undefined;
      if (!token || !t) {
        v.unidentified.push(JSON.stringify(text.slice(0, 120)));
        continue;
      }
      arrived.set(token, (arrived.get(token) ?? 0) + 1);
      if (m.body.length > this.options.maxMessageSize)
        v.oversized.push(
          finding(t, `${m.body.length} bytes delivered, limit ${this.options.maxMessageSize}`),
        );
      if (t.state === 'aborted' || t.state === 'smuggled' || t.state === 'unauth')
        v.forbidden.push(finding(t, `${t.state} message ${token} delivered to ${m.recipients.join(',')}`));
      if (t.state === 'acked' && t.expected) {
        // A repeated RCPT counts once (smtp-server replaces it, the relay stores it once, case-insensitively).
        const to = new Map(t.expected.recipients.map((r) => [canonical(r).toLowerCase(), canonical(r)]));
        const want = { from: canonical(t.expected.mailFrom), to: [...to.values()].sort() };
        const got = { from: canonical(m.mailFrom), to: m.recipients.map(canonical).sort() };
        if (JSON.stringify(want) !== JSON.stringify(got))
          (t.expected.odd ? v.oddEnvelopeMismatches : v.envelopeMismatches).push(
            finding(t, `accepted ${JSON.stringify(want)}, SES got ${JSON.stringify(got)}`),
          );
      }
    }
    for (const [token, t] of this.tokens) {
      const n = arrived.get(token) ?? 0;
      if (n > 1) v.duplicates.push(finding(t, `${token} arrived ${n} times`));
      if (t.state === 'acked' && n === 0)
        (t.expected?.odd ? v.oddEnvelopeMismatches : v.missing).push(
          finding(t, `${token} (${t.expected?.queueId}) acknowledged, never delivered`),
        );
    }
    return v;
  }
}

/**
 * The form both sides are compared in: what the relay documents it stores (src/ingress/address-syntax.ts:
 * domain in lower-case A-labels) and what smtp-server does before any handler sees an address (drops an
 * RFC 5321 source route, shows A-labels as Unicode — the fake SES is an smtp-server too). The local part is
 * compared byte for byte.
 */
function canonical(address: string): string {
  const path = address.replace(/^@[^:]*:/, '');
  const at = path.lastIndexOf('@');
  if (at < 0) return path;
  const domain = path.slice(at + 1).toLowerCase();
  return `${path.slice(0, at)}@${domain.startsWith('[') ? domain : domainToASCII(domain) || domain}`;
}

/** Attackers come from other loopback addresses than the client: mostly fresh ones, some from a small pool. */
function attackerAddress(rng: Rng): string {
  if (rng.chance(0.2)) return `127.255.0.${rng.int(1, 4)}`;
  return `127.${rng.int(1, 254)}.${rng.int(0, 255)}.${rng.int(1, 254)}`;
}
