/** Client side of end-to-end tests: nodemailer (pooled) sending numbered messages to the relay. */
import nodemailer from 'nodemailer';

export interface SendResult {
  index: number;
  queueId?: string;
  error?: Error;
}

export function relayClient(port: number, maxConnections = 5) {
  return nodemailer.createTransport({
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    pool: true,
    maxConnections,
    maxMessages: Infinity,
    connectionTimeout: 10_000,
    socketTimeout: 20_000,
  });
}

export function queueIdOf(response: string): string | undefined {
  return /queued as (\S+)/.exec(response)?.[1];
}

/** A message whose subject and body carry `marker`, so the fake SES side can match it. */
export function numberedMessage(marker: string, recipients: string[], extraBody = '') {
  return {
    from: 'sender@example.com',
    to: recipients,
    subject: marker,
    text: `${marker}\r\n${extraBody}`,
    headers: { 'X-Test-Marker': marker },
  };
}

/** Marker of a message received upstream (from its X-Test-Marker header). */
export function markerOf(body: Buffer): string | undefined {
  return /^X-Test-Marker: (\S+)/im.exec(body.toString('utf8'))?.[1];
}

/**
 * Send `count` messages concurrently through a pooled client; `onAck` sees each acknowledgement as it comes.
 * Failures (connection refused after a kill, 4xx) are returned, not thrown.
 */
export async function sendMany(
  port: number,
  count: number,
  options: {
    prefix?: string;
    recipients?: (i: number) => string[];
    maxConnections?: number;
    onAck?: (r: SendResult) => void;
  } = {},
): Promise<SendResult[]> {
  const client = relayClient(port, options.maxConnections ?? 10);
  const prefix = options.prefix ?? 'msg';
  try {
    return await Promise.all(
      Array.from({ length: count }, async (_, index) => {
        const rcpts = options.recipients?.(index) ?? [`rcpt${index}@example.net`];
        try {
          const info = await client.sendMail(numberedMessage(`${prefix}-${index}`, rcpts));
          const r = { index, queueId: queueIdOf(info.response) };
          options.onAck?.(r);
          return r;
        } catch (error) {
          return { index, error: error as Error };
        }
      }),
    );
  } finally {
    client.close();
  }
}
