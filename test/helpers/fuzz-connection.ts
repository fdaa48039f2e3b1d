/**
 * One raw SMTP connection of the protocol fuzzer: writes whatever bytes it is given, and checks every byte the
 * server sends back against the reply grammar of RFC 5321 section 4.2 (three-digit code 2xx-5xx, second
 * digit 0-5, `-` on every line but the last, the same code on every line, text of TAB and printable ASCII
 * only, at most 512 octets with CRLF, section 4.5.3.1.5) and RFC 3463 (an enhanced status code has the class
 * of the reply). Problems are reported through `onMalformed`, never thrown: the fuzzer collects them.
 *
 * Every wait is bounded; a read that times out or meets a closed connection returns undefined.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { SmtpReply } from './smtp-client';

export interface FuzzConnectionOptions {
  port: number;
  /** Source address (any 127.x.y.z works on Linux loopback). */
  localAddress?: string;
  connectTimeoutMs?: number;
  onReply?: (reply: SmtpReply) => void;
  onMalformed?: (problem: string, line: string) => void;
}

const REPLY_LINE = /^([2-5][0-5][0-9])(?:([ -])(.*))?$/s;
const TEXT = /^[\t\x20-\x7e]*$/;
const ENHANCED = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?: |$)/;
const MAX_LINE = 512 - 2;

/** Why `line` (without CRLF) is not a valid reply line, or undefined when it is. */
export function replyLineProblem(line: string): string | undefined {
  if (line.length > MAX_LINE) return `reply line of ${line.length + 2} octets (max 512)`;
  if (/[\r\n]/.test(line)) return 'bare CR or LF inside a reply line';
  const m = REPLY_LINE.exec(line);
  if (!m) return 'not <3-digit code>[SP|-]<text>';
  const text = m[3] ?? '';
  if (!TEXT.test(text)) return 'reply text has a control or 8-bit character';
  const enhanced = ENHANCED.exec(text);
  if (enhanced && enhanced[1] !== m[1][0]) return `enhanced code ${enhanced[0].trim()} in a ${m[1]} reply`;
  return undefined;
}

export class FuzzConnection {
  socket: net.Socket | tls.TLSSocket;
  /** Every complete reply received, in order. */
  readonly replies: SmtpReply[] = [];
  private unread: SmtpReply[] = [];
  private buffer = '';
  private pending: string[] = [];
  private waiters: Array<() => void> = [];
  private serverClosed = false;
  private destroyedByUs = false;

  private constructor(
    socket: net.Socket,
    private readonly options: FuzzConnectionOptions,
  ) {
    this.socket = socket;
    this.attach(socket);
  }

  static open(options: FuzzConnectionOptions): Promise<FuzzConnection | undefined> {
    return new Promise((resolve) => {
      const socket = net.connect({
        host: '127.0.0.1',
        port: options.port,
        localAddress: options.localAddress,
      });
      const timer = setTimeout(() => {
        socket.destroy();
        resolve(undefined);
      }, options.connectTimeoutMs ?? 10_000);
      socket.once('error', () => {
        clearTimeout(timer);
        resolve(undefined);
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new FuzzConnection(socket, options));
      });
    });
  }

  private attach(socket: net.Socket | tls.TLSSocket): void {
    socket.on('data', (d: Buffer) => {
      this.buffer += d.toString('latin1');
      this.parse();
      this.wake();
    });
    socket.on('close', () => {
      if (this.socket !== socket) return;
      if (!this.destroyedByUs && this.buffer.length)
        this.options.onMalformed?.('incomplete reply line when the server closed', this.buffer.slice(0, 200));
      this.serverClosed = true;
      this.wake();
    });
    socket.on('error', () => {
      if (this.socket !== socket) return;
      this.serverClosed = true;
      this.wake();
    });
  }

  private parse(): void {
    for (;;) {
      const eol = this.buffer.indexOf('\r\n');
      if (eol < 0) {
        if (this.buffer.length > 4096) {
          this.options.onMalformed?.('over 4 KB without CRLF', this.buffer.slice(0, 200));
          this.buffer = '';
        }
        return;
      }
      const line = this.buffer.slice(0, eol);
      this.buffer = this.buffer.slice(eol + 2);
      const problem = replyLineProblem(line);
      if (problem) this.options.onMalformed?.(problem, line.slice(0, 200));
      if (this.pending.length && this.pending[0].slice(0, 3) !== line.slice(0, 3))
        this.options.onMalformed?.('multi-line reply changes its code', `${this.pending[0]} / ${line}`);
      this.pending.push(line);
      if (line[3] === '-') continue;
      const lines = this.pending;
      this.pending = [];
      const reply = { code: Number(lines[0].slice(0, 3)) || 0, lines, text: lines.join('\n') };
      this.replies.push(reply);
      this.unread.push(reply);
      this.options.onReply?.(reply);
    }
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private waitForEvent(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, Math.max(1, ms));
      this.waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** The server closed the connection (or it broke). */
  get closed(): boolean {
    return this.serverClosed;
  }

  write(data: string | Buffer): void {
    if (this.serverClosed || this.socket.destroyed || this.socket.writableEnded) return;
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  /** Writes `line` + CRLF and reads the reply. */
  command(line: string | Buffer, timeoutMs?: number): Promise<SmtpReply | undefined> {
    this.write(Buffer.concat([Buffer.from(line as string, 'latin1'), Buffer.from('\r\n')]));
    return this.read(timeoutMs);
  }

  /** The next reply, or undefined after timeoutMs or when the connection closed first. */
  async read(timeoutMs = 10_000): Promise<SmtpReply | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = this.unread.shift();
      if (r) return r;
      if (this.serverClosed || this.destroyedByUs) return undefined;
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await this.waitForEvent(left);
    }
  }

  /** Replies until none came for quietMs, the connection closed, or maxMs passed. */
  async drain(quietMs = 150, maxMs = 3000): Promise<SmtpReply[]> {
    const out: SmtpReply[] = [];
    const deadline = Date.now() + maxMs;
    while (Date.now() < deadline) {
      const r = await this.read(Math.min(quietMs, deadline - Date.now()));
      if (!r) break;
      out.push(r);
    }
    return out;
  }

  /** Waits (bounded) until the server has closed the connection. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.serverClosed && !this.destroyedByUs && Date.now() < deadline)
      await this.waitForEvent(deadline - Date.now());
    return this.serverClosed;
  }

  /** Upgrades after the 220 to STARTTLS; false when the handshake failed or timed out. */
  async startTls(ca: Buffer, timeoutMs = 10_000): Promise<boolean> {
    if (this.buffer.length || this.unread.length)
      this.options.onMalformed?.('bytes after 220 to STARTTLS, before TLS', this.buffer.slice(0, 200));
    const plain = this.socket as net.Socket;
    plain.removeAllListeners('data');
    const secure = tls.connect({ socket: plain, ca, servername: 'localhost' });
    this.socket = secure;
    this.buffer = '';
    this.unread = [];
    this.attach(secure);
    const ok = await new Promise<boolean>((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      secure.once('secureConnect', () => {
        clearTimeout(t);
        resolve(true);
      });
      secure.once('error', () => {
        clearTimeout(t);
        resolve(false);
      });
      secure.once('close', () => {
        clearTimeout(t);
        resolve(false);
      });
    });
    if (!ok) {
      this.serverClosed = true;
      this.wake();
    }
    return ok;
  }

  /** Starts a TLS handshake and destroys the connection while it runs (after `afterMs`). */
  abortTlsHandshake(afterMs: number): Promise<void> {
    this.socket.removeAllListeners('data');
    const secure = tls.connect({ socket: this.socket as net.Socket, servername: 'localhost', ca: [] });
    secure.on('error', () => {});
    return new Promise((resolve) =>
      setTimeout(() => {
        this.destroy();
        secure.destroy();
        resolve();
      }, afterMs),
    );
  }

  /** Half-close: FIN our side, keep reading. */
  end(): void {
    if (!this.socket.destroyed && !this.socket.writableEnded) this.socket.end();
  }

  /** Stop reading (the server's writes pile up) / read again. */
  pause(): void {
    this.socket.pause();
  }

  destroy(): void {
    this.destroyedByUs = true;
    this.socket.destroy();
    this.wake();
  }
}
