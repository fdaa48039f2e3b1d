/**
 * Reading a request: only its header block is kept (at most MAX_HEADER_BYTES); the body is counted and
 * thrown away (or streamed to the DKIM verifier), so a large request never sits in memory. The header
 * block is parsed with mailparser (decoded Subject) and nodemailer's addressparser (each `From` field on
 * its own: mailparser keeps only the first, and a request with two `From` fields has no single requester).
 */
import addressparser from 'nodemailer/lib/addressparser';
import { simpleParser } from 'mailparser';

/** Header blocks larger than this are not read further (the request then has no requester). */
export const MAX_HEADER_BYTES = 256 * 1024;

export interface ParsedRequest {
  /** Header fields by lower-case name, values unfolded and trimmed. */
  headers: Map<string, string[]>;
  /** Addresses of every `From` field, as written. */
  fromAddresses: string[];
  headersComplete: boolean;
  /** Decoded Subject ('' when absent). */
  subject: string;
  /** The request's Message-ID as one raw `<id>` token, or undefined when absent or malformed. */
  messageId?: string;
}

/** Collects the header block of a message fed chunk by chunk. */
export class HeaderBlockCollector {
  private chunks: Buffer[] = [];
  private size = 0;
  private found = false;
  private overflow = false;

  push(chunk: Buffer): void {
    if (this.found || this.overflow) return;
    this.chunks.push(chunk);
    this.size += chunk.length;
    const all = this.chunks.length > 1 ? Buffer.concat(this.chunks) : chunk;
    this.chunks = [all];
    const end = headerEnd(all);
    if (end >= 0) {
      this.chunks = [all.subarray(0, end)];
      this.found = true;
    } else if (this.size > MAX_HEADER_BYTES) {
      this.overflow = true;
      this.chunks = [];
    }
  }

  /** The header block; complete when the blank line was seen or the message ended within the limit. */
  result(): { block: Buffer; complete: boolean } {
    return { block: Buffer.concat(this.chunks), complete: !this.overflow };
  }
}

/** Offset just past the header block's last line, or -1 when the blank line has not come yet. */
function headerEnd(buf: Buffer): number {
  const crlf = buf.indexOf('\r\n\r\n');
  const lf = buf.indexOf('\n\n');
  if (crlf < 0 && lf < 0) return -1;
  if (crlf < 0) return lf + 1;
  if (lf < 0) return crlf + 2;
  return Math.min(crlf + 2, lf + 1);
}

function unfold(line: string): string {
  const colon = line.indexOf(':');
  return line
    .slice(colon + 1)
    .replace(/\r?\n[ \t]/g, ' ')
    .trim();
}

function addressesOf(value: string): string[] {
  const out: string[] = [];
  const walk = (list: ReturnType<typeof addressparser>): void => {
    for (const a of list) {
      if ('group' in a && a.group) walk(a.group);
      else if ('address' in a && a.address) out.push(a.address);
    }
  };
  walk(addressparser(value));
  return out;
}

/** One `<id>` token (RFC 5322 msg-id, printable ASCII, no spaces), else undefined. */
export function messageIdToken(value: string | undefined): string | undefined {
  const m = /<([!-;=?-~]{1,250})>/.exec(value ?? '');
  return m ? `<${m[1]}>` : undefined;
}

export async function parseRequestHeaders(block: Buffer, complete: boolean): Promise<ParsedRequest> {
  const parsed = await simpleParser(Buffer.concat([block, Buffer.from('\r\n')]), {
    skipHtmlToText: true,
    skipTextToHtml: true,
    skipTextLinks: true,
  });
  const headers = new Map<string, string[]>();
  const fromAddresses: string[] = [];
  for (const { key, line } of parsed.headerLines) {
    const value = unfold(line);
    headers.set(key, [...(headers.get(key) ?? []), value]);
    if (key === 'from') fromAddresses.push(...addressesOf(value));
  }
  return {
    headers,
    fromAddresses,
    headersComplete: complete && block.length > 0,
    subject: parsed.subject ?? '',
    messageId: messageIdToken(headers.get('message-id')?.[0]),
  };
}
