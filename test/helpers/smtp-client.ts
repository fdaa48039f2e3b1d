/**
 * A raw-socket SMTP client for protocol edge cases (what nodemailer would never send): write exact
 * bytes, read complete replies (multi-line aware). Every wait is bounded by a timeout.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import type { IngressConfig } from '../../src/config';

export interface SmtpReply {
  code: number;
  /** All lines of the reply, without CRLF. */
  lines: string[];
  /** The lines joined with "\n". */
  text: string;
}

export class RawSmtpClient {
  private buffer = '';
  private waiters: Array<() => void> = [];
  private ended = false;
  socket: net.Socket | tls.TLSSocket;

  private constructor(socket: net.Socket | tls.TLSSocket) {
    this.socket = socket;
    this.attach(socket);
  }

  private attach(socket: net.Socket | tls.TLSSocket): void {
    socket.on('data', (d: Buffer) => {
      this.buffer += d.toString('latin1');
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', () => {
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Connects (plain, or implicit TLS with `tls` options; from `localAddress` if given). Does not read the greeting. */
  static connect(
    port: number,
    options: { tls?: tls.ConnectionOptions; host?: string; localAddress?: string } = {},
  ): Promise<RawSmtpClient> {
    const host = options.host ?? '127.0.0.1';
    const from = options.localAddress ? { localAddress: options.localAddress } : {};
    return new Promise((resolve, reject) => {
      const socket = options.tls
        ? tls.connect({ host, port, ...from, ...options.tls }, () => resolve(new RawSmtpClient(socket)))
        : net.connect({ host, port, ...from }, () => resolve(new RawSmtpClient(socket)));
      socket.once('error', reject);
    });
  }

  /** True once the server closed the connection. */
  get closed(): boolean {
    return this.ended;
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Reads the next complete reply. */
  async read(timeoutMs = 5000): Promise<SmtpReply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const reply = this.parse();
      if (reply) return reply;
      if (this.ended) throw new Error(`connection closed (buffer: ${JSON.stringify(this.buffer)})`);
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(`no reply within ${timeoutMs} ms (buffer: ${JSON.stringify(this.buffer)})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  private parse(): SmtpReply | undefined {
    const lines: string[] = [];
    let pos = 0;
    for (;;) {
      const eol = this.buffer.indexOf('\r\n', pos);
      if (eol < 0) return undefined;
      const line = this.buffer.slice(pos, eol);
      lines.push(line);
      pos = eol + 2;
      if (line.length < 4 || line[3] !== '-') {
        this.buffer = this.buffer.slice(pos);
        return { code: Number(line.slice(0, 3)), lines, text: lines.join('\n') };
      }
    }
  }

  /** Sends a command line (CRLF added) and reads the reply. */
  async command(line: string, timeoutMs?: number): Promise<SmtpReply> {
    this.write(`${line}\r\n`);
    return this.read(timeoutMs);
  }

  /** Upgrades with STARTTLS (the 220 must already be read). */
  async startTls(options: tls.ConnectionOptions): Promise<void> {
    const plain = this.socket as net.Socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ socket: plain, ...options }, () => resolve(s));
      s.once('error', reject);
    });
    this.socket = secure;
    this.buffer = '';
    this.attach(secure);
  }

  /** Waits until the server closes the connection (bounded). */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.ended;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Test TLS material (private CA + localhost certificate). */
export function testTls(): { ca: Buffer; cert: Buffer; key: Buffer; certPath: string; keyPath: string } {
  const dir = path.join(__dirname, '..', 'fixtures', 'tls');
  const certPath = path.join(dir, 'server.crt');
  const keyPath = path.join(dir, 'server.key');
  return {
    ca: fs.readFileSync(path.join(dir, 'ca.crt')),
    cert: fs.readFileSync(certPath),
    key: fs.readFileSync(keyPath),
    certPath,
    keyPath,
  };
}

/** An ingress configuration for tests: 127.0.0.1, ephemeral port, loopback trusted, no users. */
export function testIngressConfig(overrides: Partial<IngressConfig> = {}): IngressConfig {
  return {
    host: '127.0.0.1',
    port: 0,
    serverName: 'relay.test',
    implicitTls: false,
    tls: undefined,
    users: [],
    trustedNetworks: ['127.0.0.0/8', '::1/128'],
    trustedNetworksExplicit: false,
    allowInsecureAuth: false,
    authMaxFailures: 5,
    authLockoutMs: 60_000,
    maxMessageSize: 10 * 1024 * 1024,
    maxRecipients: 100,
    maxClients: 100,
    socketTimeoutMs: 30_000,
    greetingDelayMs: 0,
    dsn: false,
    ...overrides,
  };
}
