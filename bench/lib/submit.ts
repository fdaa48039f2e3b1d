/**
 * Submitting benchmark mail to an SMTP server (the relay or Postfix) with nodemailer, recording when each
 * message got its 250: over a pool of kept-open connections (a bulk sender), or one connection per message
 * (an application sending the odd message).
 */
import nodemailer from 'nodemailer';

export interface BenchMessage {
  from: string;
  to: string[];
  subject: string;
}

export interface SubmitOptions {
  /** AUTH PLAIN/LOGIN as this user (over plaintext: the relay needs SMTP_ALLOW_INSECURE_AUTH=true). */
  auth?: { user: string; pass: string };
  /** Pooled connections (default 10). */
  connections?: number;
}

const BODY = `Benchmark message.\r\n${'x'.repeat(76)}\r\n`.repeat(10);

function transport(port: number, options: SubmitOptions, pool: boolean) {
  return nodemailer.createTransport({
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    ...(options.auth ? { auth: options.auth } : {}),
    ...(pool ? { pool: true, maxConnections: options.connections ?? 10, maxMessages: Infinity } : {}),
  });
}

function mail(m: BenchMessage) {
  return {
    envelope: { from: m.from, to: m.to },
    from: m.from,
    to: 'undisclosed-recipients:;',
    subject: m.subject,
    text: BODY,
  };
}

/** Submit every message over a connection pool; resolves with each message's 250 time (ms epoch). */
export async function submitPooled(
  port: number,
  messages: BenchMessage[],
  options: SubmitOptions = {},
): Promise<number[]> {
  const client = transport(port, options, true);
  try {
    return await Promise.all(
      messages.map(async (m) => {
        await client.sendMail(mail(m));
        return Date.now();
      }),
    );
  } finally {
    client.close();
  }
}

/** Submit one message over a connection of its own; resolves with its 250 time (ms epoch). */
export async function submitOne(
  port: number,
  message: BenchMessage,
  options: SubmitOptions = {},
): Promise<number> {
  const client = transport(port, options, false);
  try {
    await client.sendMail(mail(message));
    return Date.now();
  } finally {
    client.close();
  }
}
