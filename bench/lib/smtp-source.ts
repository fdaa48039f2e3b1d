/**
 * Runs Postfix's SMTP load generator `smtp-source` (Debian's postfix package) and times it: the process
 * exits once every message got its reply to DATA, so messages / elapsed time is the rate at which the
 * server acknowledged mail. smtp-source aborts on any unexpected reply (we do not pass -A), so a zero exit
 * status means every message was accepted with 250.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';

export const SMTP_SOURCE = '/usr/sbin/smtp-source';

export interface SmtpSourceOptions {
  port: number;
  host?: string;
  /** Parallel sessions (-s). */
  sessions: number;
  /** Payload bytes per message (-l); headers come on top. */
  size: number;
  /** Total messages (-m), spread over the sessions. */
  messages: number;
  /** -d: keep each connection open and send the next message over it; otherwise one connection per message. */
  reuseConnection: boolean;
  /** Give up (SIGKILL) after this long. */
  timeoutMs?: number;
}

export interface SmtpSourceResult {
  seconds: number;
  messagesPerSecond: number;
  exitCode: number | null;
  output: string;
}

export function smtpSourceUnavailable(): string | undefined {
  return fs.existsSync(SMTP_SOURCE) ? undefined : `${SMTP_SOURCE} not found (apt-get install postfix)`;
}

export function smtpSourceArgs(o: SmtpSourceOptions): string[] {
  return [
    ...(o.reuseConnection ? ['-d'] : []),
    '-s',
    String(o.sessions),
    '-l',
    String(o.size),
    '-m',
    String(o.messages),
    '-M',
    'client.bench.test',
    '-f',
    'sender@bench.example',
    '-t',
    'recipient@bench.example',
    `${o.host ?? '127.0.0.1'}:${o.port}`,
  ];
}

export function runSmtpSource(o: SmtpSourceOptions): Promise<SmtpSourceResult> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(SMTP_SOURCE, smtpSourceArgs(o), { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 300_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      resolve({ seconds, messagesPerSecond: o.messages / seconds, exitCode: code, output: output.trim() });
    });
  });
}
