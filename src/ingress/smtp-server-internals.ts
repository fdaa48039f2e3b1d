/**
 * Every touch of smtp-server's private API, in this one file, for the exact version pinned in package.json
 * (SMTP_SERVER_VERSION). verifySmtpServerInternals() runs before the first listener is built and stops the
 * relay with one line naming what changed, so an upgrade can never silently change behaviour; each touch
 * has a test (test/ingress-smtp-server-internals.test.ts).
 *
 * What is touched, and why:
 * - The connection of a session: smtp-server hands handlers the session only; its `connections` set holds
 *   the SMTPConnection objects (`id` equals `session.id`). We need the connection for the two items below.
 * - Per-connection `send(code, data, context)`: our replies carry their RFC 3463 code in the text, so they
 *   must not get a second one; smtp-server's own replies are counted as `smtp_<code>` rejections; its SIZE=
 *   refusal (552) and the 500 it gives an AUTH command that the session's public `disabledCommands` hides
 *   (plaintext, or locked out) are replaced by catalogue replies (552 5.3.4, 538 5.7.11, 421 4.7.0). The 500
 *   is recognised by its `context`, which smtp-server sets to the command name.
 * - The raw TCP socket of a connection (`_socket` before any STARTTLS): STARTTLS's `upgrade()` calls
 *   `removeAllListeners()` on it, which also removes the `close` listener that let the listener forget it;
 *   the session's end (public onClose) forgets it instead (issue 8, defect 1: a leak per STARTTLS session).
 * - `SMTPConnection.prototype.init`, process-wide: smtp-server holds every connection a hard-coded 100 ms
 *   before the 220 greeting (an early-talker check). For applications on a private network that only caps
 *   throughput (20 clients opening one connection per message can never exceed 200 messages/s), and
 *   Postfix's smtpd greets at once. The replacement does the same steps with a delay set per server
 *   (SMTP_GREETING_DELAY for ours; servers that set none keep 100 ms). Early talkers are still refused
 *   ("421 You talk too soon") when the delay is above 0.
 */
import fs from 'node:fs';
import net from 'node:net';
import { SMTPServer } from 'smtp-server';
import type { SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection';

/** The smtp-server version this file was written and tested for (package.json pins it exactly). */
export const SMTP_SERVER_VERSION = '3.21.6';
/** smtp-server's own greeting delay, kept for servers that do not set one. */
const DEFAULT_GREETING_DELAY_MS = 100;
const GREETING_DELAY = Symbol('ses-email-service greeting delay');

type ServerWithDelay = SMTPServer & { [GREETING_DELAY]?: number };
type ReplyData = string | string[] | null | undefined;

/** A reply on its way to the client; `context` false means "no enhanced status code added". */
export interface Reply {
  code: number;
  data: ReplyData;
  context: string | false | undefined;
}

export class SmtpServerInternalsError extends Error {
  constructor(problems: string[]) {
    super(
      `smtp-server internals changed (${problems.join('; ')}): src/ingress/smtp-server-internals.ts ` +
        `is written for smtp-server ${SMTP_SERVER_VERSION}; review it before upgrading`,
    );
    this.name = 'SmtpServerInternalsError';
  }
}

const proto = SMTPConnection.prototype;
const ORIGINAL_INIT = proto.init;

function installedVersion(): string {
  const file = require.resolve('smtp-server/package.json');
  return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
}

/** A connection on an unconnected socket, never listened on: the instance fields and behaviour we rely on. */
function probeConnection(problems: string[]): void {
  const server = new SMTPServer({ logger: false, authOptional: true, disabledCommands: [] });
  const socket = new net.Socket();
  const conn = new SMTPConnection(server, socket);
  try {
    if (conn._socket !== socket) problems.push('SMTPConnection#_socket is not the accepted socket');
    if (!conn.session || conn.session.id !== conn.id)
      problems.push('session.id does not match connection.id');
    if (!(server.connections instanceof Set)) problems.push('SMTPServer#connections is not a Set');
    if (!(server.server instanceof net.Server)) problems.push('SMTPServer#server is not a net.Server');
    conn.session.disabledCommands = [];
    const enabled = conn._isSupported('AUTH');
    conn.session.disabledCommands = ['AUTH'];
    if (!enabled || conn._isSupported('AUTH')) problems.push('session.disabledCommands does not switch AUTH');
    const sent: Reply[] = [];
    conn.send = (code, data, context) => void sent.push({ code, data, context });
    conn._ready = true;
    conn.hostNameAppearsAs = 'probe.invalid';
    conn._onCommand(Buffer.from('AUTH PLAIN'), () => {});
    if (sent[0]?.code !== 500 || sent[0]?.context !== 'AUTH') {
      problems.push(`a disabled AUTH is answered ${JSON.stringify(sent[0])}, not 500 with context AUTH`);
    }
  } finally {
    socket.destroy();
  }
}

/** Everything this file relies on, checked against the installed smtp-server; [] when all is as expected. */
export function findInternalsProblems(): string[] {
  const problems: string[] = [];
  const version = installedVersion();
  if (version !== SMTP_SERVER_VERSION) problems.push(`installed version is ${version}`);
  for (const name of [
    'init',
    '_setListeners',
    'connectionReady',
    'send',
    '_onCommand',
    '_isSupported',
  ] as const) {
    if (typeof proto[name] !== 'function') problems.push(`SMTPConnection#${name} is missing`);
  }
  // The replacement of init repeats these steps; the original must still be exactly them.
  const init = ORIGINAL_INIT.toString();
  for (const step of ['this._setListeners(', 'maxClients', 'this.connectionReady()', ', 100)']) {
    if (!init.includes(step)) problems.push(`SMTPConnection#init no longer contains "${step}"`);
  }
  try {
    probeConnection(problems);
  } catch (err) {
    problems.push(`probe connection failed: ${err instanceof Error ? err.message : String(err)}`);
  }
  return problems;
}

let verified = false;

/** Throws SmtpServerInternalsError (one line) unless every internal used here is as expected. Memoized. */
export function verifySmtpServerInternals(): void {
  if (verified) return;
  const problems = findInternalsProblems();
  if (problems.length) throw new SmtpServerInternalsError(problems);
  verified = true;
}

function installGreetingDelayInit(): void {
  if (proto.init !== ORIGINAL_INIT) return;
  proto.init = function init(this: SMTPConnection) {
    this._setListeners(() => {
      const max = this._server.options.maxClients;
      if (max && this._server.connections.size > max) {
        return this.send(421, this.name + ' Too many connected clients, try again in a moment', false);
      }
      const delay = (this._server as ServerWithDelay)[GREETING_DELAY] ?? DEFAULT_GREETING_DELAY_MS;
      const timer = setTimeout(() => this.connectionReady(), delay);
      timer.unref();
    });
  };
}

/** The connection of one session, as the listener uses it. */
export interface SessionConnection {
  readonly session: SMTPServerSession;
  /**
   * smtp-server still lists the connection (it drops it on a 421, a QUIT or the socket's close). A reply to a
   * connection that is not open would arm smtp-server's close timer again and keep the connection alive.
   */
  readonly open: boolean;
  /** Sends a reply as is (no enhanced code added); a 421 also closes the connection. */
  reply(code: number, text: string): void;
}

interface Adopted {
  connection: SessionConnection;
  rawSocket: net.Socket;
}

export interface SmtpServerInternalsOptions {
  /** Pause before the 220 greeting (SMTP_GREETING_DELAY). */
  greetingDelayMs: number;
  /** Every reply of an adopted connection passes through this. */
  rewriteReply(session: SMTPServerSession, reply: Reply): Reply;
}

/** The private parts of one SMTPServer the listener needs: its connections, their replies, raw sockets. */
export class SmtpServerInternals {
  private readonly rawSockets = new Set<net.Socket>();
  private readonly adopted = new WeakMap<SMTPServerSession, Adopted>();

  constructor(
    private readonly server: SMTPServer,
    private readonly options: SmtpServerInternalsOptions,
  ) {
    verifySmtpServerInternals();
    installGreetingDelayInit();
    (server as ServerWithDelay)[GREETING_DELAY] = Math.max(0, options.greetingDelayMs);
    server.server.on('connection', (socket: net.Socket) => {
      this.rawSockets.add(socket);
      socket.once('close', () => this.rawSockets.delete(socket));
    });
  }

  /**
   * Called from onConnect: finds the session's connection, routes its replies through rewriteReply and
   * remembers its raw socket. Undefined if smtp-server no longer lists it (verified at start, so not expected).
   */
  adopt(session: SMTPServerSession): SessionConnection | undefined {
    const known = this.adopted.get(session);
    if (known) return known.connection;
    const conn = [...this.server.connections].find((c) => c.id === session.id);
    if (!conn) return undefined;
    const send = conn.send.bind(conn);
    conn.send = (code, data, context) => {
      const r = this.options.rewriteReply(conn.session, { code, data, context });
      send(r.code, r.data, r.context);
    };
    const connections = this.server.connections;
    const connection: SessionConnection = {
      session,
      get open() {
        return connections.has(conn);
      },
      reply: (code, text) => conn.send(code, text, false),
    };
    // Before any STARTTLS this is the accepted raw socket (implicit TLS: the TLSSocket over it, whose raw
    // socket keeps its close listener, as server-side TLS does not strip it).
    this.adopted.set(session, { connection, rawSocket: conn._socket as net.Socket });
    return connection;
  }

  /** The adopted connection of a session. */
  connectionOf(session: SMTPServerSession): SessionConnection | undefined {
    return this.adopted.get(session)?.connection;
  }

  /** Connections smtp-server has open (adopted or not yet). */
  get connectionCount(): number {
    return this.server.connections.size;
  }

  /** Called from onClose: the session is over, its raw socket is forgotten even if STARTTLS stripped its listener. */
  release(session: SMTPServerSession): void {
    const a = this.adopted.get(session);
    if (a) this.rawSockets.delete(a.rawSocket);
  }

  /** Connections smtp-server has open and the listener adopted. */
  connections(): SessionConnection[] {
    const out: SessionConnection[] = [];
    for (const c of this.server.connections) {
      const a = this.adopted.get(c.session);
      if (a) out.push(a.connection);
    }
    return out;
  }

  get openSockets(): number {
    return this.rawSockets.size;
  }

  /** Drops every socket still open (the end of a shutdown). */
  destroySockets(): void {
    for (const socket of this.rawSockets) socket.destroy();
  }
}
