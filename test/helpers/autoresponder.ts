/**
 * The autoresponder's test harness: requests written as a mail server would send them (raw RFC 5322 over
 * SMTP to the autoresponder's port), the relay environment that turns it on, and the reply side: every reply
 * parsed with mailparser plus its raw header fields and its MIME tree (content types, nesting, file names).
 */
import fs from 'node:fs';
import path from 'node:path';
import nodemailer from 'nodemailer';
import { simpleParser, type ParsedMail } from 'mailparser';
import { tempDir } from './relay-process';

export interface RequestOptions {
  /** `From` header value (default `Requester <requester@example.net>`). */
  from?: string;
  to?: string;
  subject?: string;
  /** Message-ID value, or null for none (default a unique one). */
  messageId?: string | null;
  /** Extra header lines, e.g. `Auto-Submitted: auto-replied`. */
  headers?: string[];
  body?: string;
}

let counter = 0;

/** A request as a mail client would write it. */
export function requestMessage(o: RequestOptions = {}): string {
  counter += 1;
  const lines = [
    `From: ${o.from ?? 'Requester <requester@example.net>'}`,
    `To: ${o.to ?? 'get@example.org'}`,
    `Subject: ${o.subject ?? 'please send'}`,
    `Date: ${new Date().toUTCString()}`,
  ];
  if (o.messageId !== null)
    lines.push(`Message-ID: ${o.messageId ?? `<req-${process.pid}-${Date.now()}-${counter}@example.net>`}`);
  lines.push(...(o.headers ?? []));
  return `${lines.join('\r\n')}\r\n\r\n${o.body ?? 'Hello, I would like the software.'}\r\n`;
}

export interface SendOutcome {
  ok: boolean;
  code: number;
  response: string;
}

/** One SMTP transaction to the autoresponder; SMTP errors are returned, not thrown. */
export async function sendRequest(
  port: number,
  raw: string | Buffer,
  envelope: { from: string; to: string[] } = { from: 'requester@example.net', to: ['get@example.org'] },
): Promise<SendOutcome> {
  const transport = nodemailer.createTransport({
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    connectionTimeout: 10_000,
    socketTimeout: 30_000,
  });
  try {
    const info = await transport.sendMail({ envelope, raw });
    return { ok: true, code: Number(info.response.slice(0, 3)), response: info.response };
  } catch (err) {
    const e = err as { responseCode?: number; response?: string; message: string };
    return { ok: false, code: e.responseCode ?? 0, response: e.response ?? e.message };
  } finally {
    transport.close();
  }
}

/** Environment that turns the autoresponder on with a configuration file written here. */
export function autoresponderEnv(
  config: unknown,
  port: number,
  extra: Record<string, string> = {},
): { env: Record<string, string>; configPath: string } {
  const dir = tempDir('autoresponder-conf-');
  const configPath = path.join(dir, 'conf.json');
  fs.writeFileSync(configPath, JSON.stringify(config));
  return {
    configPath,
    env: {
      AUTORESPONDER_CONFIG: configPath,
      AUTORESPONDER_HOST: '127.0.0.1',
      AUTORESPONDER_PORT: String(port),
      AUTORESPONDER_FROM: 'Responder <noreply@example.org>',
      AUTORESPONDER_CONFIG_REFRESH: '200ms',
      RETRY_SCHEDULE: '500ms',
      SES_RATE_LIMIT: '100',
      ...extra,
    },
  };
}

/** Replace a file atomically by rename, as configuration management tools do. */
export function replaceByRename(file: string, content: string): void {
  const tmp = `${file}.new-${process.pid}`;
  fs.writeFileSync(tmp, content);
  fs.renameSync(tmp, file);
}

export interface MimeTree {
  type: string;
  charset?: string;
  filename?: string;
  encoding?: string;
  children: MimeTree[];
}

function headerBlock(raw: string): { headers: Map<string, string>; body: string } {
  const end = raw.indexOf('\r\n\r\n');
  const head = end < 0 ? raw : raw.slice(0, end);
  const headers = new Map<string, string>();
  for (const line of head.replace(/\r\n[ \t]+/g, ' ').split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0) {
      const name = line.slice(0, i).toLowerCase();
      if (!headers.has(name)) headers.set(name, line.slice(i + 1).trim());
    }
  }
  return { headers, body: end < 0 ? '' : raw.slice(end + 4) };
}

const param = (value: string, name: string) => new RegExp(`;\\s*${name}="?([^";]+)"?`, 'i').exec(value)?.[1];

/** The MIME structure of a message: types, nesting, charsets, file names, transfer encodings. */
export function mimeTree(raw: string): MimeTree {
  const { headers, body } = headerBlock(raw);
  const contentType = headers.get('content-type') ?? 'text/plain';
  const node: MimeTree = {
    type: contentType.split(';')[0].trim().toLowerCase(),
    charset: param(contentType, 'charset')?.toLowerCase(),
    filename: param(headers.get('content-disposition') ?? '', 'filename') ?? param(contentType, 'name'),
    encoding: headers.get('content-transfer-encoding')?.toLowerCase(),
    children: [],
  };
  const boundary = param(contentType, 'boundary');
  if (node.type.startsWith('multipart/') && boundary) {
    const parts = body.split(`--${boundary}`);
    for (const part of parts.slice(1)) {
      if (part.startsWith('--')) break;
      node.children.push(mimeTree(part.replace(/^\r\n/, '')));
    }
  }
  return node;
}

/** Raw header fields of a message (unfolded), every occurrence. */
export function rawHeaders(raw: string): Array<[string, string]> {
  const end = raw.indexOf('\r\n\r\n');
  const head = end < 0 ? raw : raw.slice(0, end);
  return head
    .replace(/\r\n[ \t]+/g, ' ')
    .split('\r\n')
    .filter((l) => l.includes(':'))
    .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]);
}

export function rawHeader(raw: string, name: string): string[] {
  return rawHeaders(raw)
    .filter(([n]) => n.toLowerCase() === name.toLowerCase())
    .map(([, v]) => v);
}

export async function parseReply(raw: Buffer | string): Promise<ParsedMail> {
  return simpleParser(raw);
}
