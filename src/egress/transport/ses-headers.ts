/**
 * Header fields SES reads from a message on its way out (not in the spool): the configuration set,
 * `X-SES-CONFIGURATION-SET` (SES developer guide, "Using configuration sets": with the SMTP interface the
 * set is named in this header; with the API, in ConfigurationSetName) — the tenant's, else
 * SES_CONFIGURATION_SET — and the tenant's message tags, `X-SES-MESSAGE-TAGS: name=value, name2=value2`
 * (developer guide, "Specify your configuration set when you send email"; the API's EmailTags). SES removes
 * both headers before it sends the message on.
 *
 * The body is never re-encoded: a header line is prepended to the raw byte stream, and only when the
 * message's own header section does not already carry that field (the sender's choice wins over
 * SES_CONFIGURATION_SET) — except a tenant's configuration set and tags, which are enforced: the
 * message's own X-SES-CONFIGURATION-SET / X-SES-MESSAGE-TAGS lines are removed and the tenant's prepended
 * (a set chosen by the sender could route it through another tenant's IP pool, event destinations or
 * suppression settings; tags are the operator's attribution). Only the
 * header section is examined, and at most HEADER_SCAN_LIMIT bytes of it are held in memory.
 */
import { Readable } from 'node:stream';

export const CONFIGURATION_SET_HEADER = 'X-SES-CONFIGURATION-SET';
export const MESSAGE_TAGS_HEADER = 'X-SES-MESSAGE-TAGS';

/** What SES accepts as a tag name or value: ASCII letters, digits, `_` and `-`, under 256 characters. */
const TAG_TEXT = /^[A-Za-z0-9_-]{1,255}$/;

/** The tags SES accepts, as [name, value] pairs (others are left out rather than fail the message). */
export function validTags(tags: Record<string, string> | undefined): Array<[string, string]> {
  return Object.entries(tags ?? {}).filter(([k, v]) => TAG_TEXT.test(k) && TAG_TEXT.test(String(v)));
}

/** The value of an X-SES-MESSAGE-TAGS header (`name=value, name2=value2`), or undefined for no tags. */
export function messageTagsValue(tags: Record<string, string> | undefined): string | undefined {
  const valid = validTags(tags);
  return valid.length ? valid.map(([k, v]) => `${k}=${v}`).join(', ') : undefined;
}

/** Bytes of a message examined for its header section before giving up looking for its end. */
export const HEADER_SCAN_LIMIT = 256 * 1024;

/** Offset just past the blank line that ends the header section, or -1 when it is not in `buf`. */
export function headerEnd(buf: Buffer): number {
  const crlf = buf.indexOf('\r\n\r\n');
  const lf = buf.indexOf('\n\n');
  if (crlf >= 0 && (lf < 0 || crlf < lf)) return crlf + 4;
  return lf >= 0 ? lf + 2 : -1;
}

/** The header section of a whole message (all of it when there is no blank line). */
export function headerSection(message: Buffer): Buffer {
  const end = headerEnd(message);
  return end >= 0 ? message.subarray(0, end) : message;
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** True when the header section has a field `name` (case-insensitive; folded lines never match). */
export function hasHeader(header: Buffer, name: string): boolean {
  return new RegExp(`(^|\\n)${escape(name)}[ \\t]*:`, 'i').test(header.toString('latin1'));
}

/** A header line safe to prepend: no CR/LF can come from the value. */
export function headerLine(name: string, value: string): Buffer {
  return Buffer.from(`${name}: ${value.replace(/[\r\n]+/g, ' ')}\r\n`, 'latin1');
}

/**
 * `body` with `name: value` prepended unless its header section already has `name`. An error of `body`
 * ends the returned stream with that error (the caller's listener on `body` sees it too).
 */
export function prependHeaderUnlessPresent(body: Readable, name: string, value: string): Readable {
  return prependHeadersUnlessPresent(body, [[name, value]]);
}

/**
 * `header` (a header section, or its start) without the field `name`: each of its lines and their folded
 * continuation lines removed, every other byte as it was.
 */
export function withoutField(header: Buffer, name: string): Buffer {
  const text = header.toString('latin1');
  const lines = text.match(/[^\n]*\n|[^\n]+$/g) ?? [];
  const field = new RegExp(`^${escape(name)}[ \\t]*:`, 'i');
  const kept: string[] = [];
  let dropping = false;
  for (const line of lines) {
    if (dropping && /^[ \t]/.test(line)) continue;
    dropping = field.test(line);
    if (!dropping) kept.push(line);
  }
  return Buffer.from(kept.join(''), 'latin1');
}

/**
 * `body` with each `[name, value]` line prepended unless its header section already has that field; the
 * fields named in `enforced` are prepended in any case and the message's own lines of them removed (a
 * tenant's configuration set is the operator's, not the sender's, choice).
 */
export function prependHeadersUnlessPresent(
  body: Readable,
  fields: Array<[string, string]>,
  enforced: string[] = [],
): Readable {
  const isEnforced = (name: string) => enforced.some((e) => e.toLowerCase() === name.toLowerCase());
  const missing = (head: Buffer) =>
    fields
      .filter(([name]) => isEnforced(name) || !hasHeader(head, name))
      .map(([name, value]) => headerLine(name, value));
  const cleaned = (head: Buffer, end: number) => {
    if (enforced.length === 0) return head;
    let section = end >= 0 ? head.subarray(0, end) : head;
    for (const name of enforced) section = withoutField(section, name);
    return end >= 0 ? Buffer.concat([section, head.subarray(end)]) : section;
  };
  async function* withHeader(): AsyncGenerator<Buffer> {
    let head: Buffer = Buffer.alloc(0);
    let decided = false;
    for await (const chunk of body) {
      const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
      if (decided) {
        yield buf;
        continue;
      }
      head = head.length ? Buffer.concat([head, buf]) : buf;
      const end = headerEnd(head);
      if (end >= 0 || head.length >= HEADER_SCAN_LIMIT) {
        decided = true;
        yield* missing(end >= 0 ? head.subarray(0, end) : head);
        yield cleaned(head, end);
      }
    }
    if (!decided) {
      yield* missing(head);
      const rest = cleaned(head, -1);
      if (rest.length) yield rest;
    }
  }
  return Readable.from(withHeader(), { objectMode: false });
}

/** A whole message without the header field `name` (its header section only; the body is untouched). */
export function withoutHeaderField(message: Buffer, name: string): Buffer {
  const end = headerEnd(message);
  const section = end >= 0 ? message.subarray(0, end) : message;
  if (!hasHeader(section, name)) return message;
  const cleaned = withoutField(section, name);
  return end >= 0 ? Buffer.concat([cleaned, message.subarray(end)]) : cleaned;
}
