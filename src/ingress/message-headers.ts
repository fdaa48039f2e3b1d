/**
 * The header section of a message in DATA, for the API-key sender rule: an API key with
 * `allowed_from_domains` may only send mail whose `From:` and `Sender:` headers (every address in every such
 * header) are in those domains, as its envelope sender must be. SES checks the From/Sender/Return-Path
 * identities against the account, not against our keys, so the relay enforces this itself.
 *
 * Only the header section is kept (up to the first empty line, at most HEADER_SECTION_LIMIT bytes, Postfix's
 * `header_size_limit` default); the body streams through untouched, never buffered. A header section that is
 * larger, or has no From address, cannot be shown to be allowed and is refused. Headers are split and
 * unfolded by libmime and the address lists parsed by nodemailer's addressparser (mailparser's parsers);
 * comments, groups and display names are handled there, so `"a@allowed.example" <x@evil.example>` is
 * x@evil.example.
 */
import { Transform, type TransformCallback } from 'node:stream';
import libmime from 'libmime';
import addressparser from 'nodemailer/lib/addressparser';

export const HEADER_SECTION_LIMIT = 102_400;
const END_OF_HEADERS = Buffer.from('\r\n\r\n');
const CRLF = Buffer.from('\r\n');

/** Every address in the `From:` and `Sender:` header fields (all of them, if repeated). */
export function senderHeaderAddresses(headerSection: string): { from: string[]; sender: string[] } {
  const headers = libmime.decodeHeaders(headerSection);
  const addresses = (values: string[] | undefined): string[] =>
    (values ?? []).flatMap((v) => addressparser(v, { flatten: true }).map((a) => a.address));
  return { from: addresses(headers.from), sender: addresses(headers.sender) };
}

/**
 * Passes a normalised (CRLF-only) body through unchanged and calls `check` with its header section as soon
 * as the section is complete (or at the end of a message without a body). An error from `check` fails the
 * stream before its end, so the spool stores nothing.
 */
export class HeaderSectionCheck extends Transform {
  private head: Buffer = Buffer.alloc(0);
  private done = false;

  constructor(private readonly check: (headerSection: string | undefined) => Error | undefined) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (!this.done) {
      const searchFrom = Math.max(0, this.head.length - (END_OF_HEADERS.length - 1));
      this.head = Buffer.concat([this.head, chunk.subarray(0, HEADER_SECTION_LIMIT + END_OF_HEADERS.length)]);
      const end = this.head.subarray(0, CRLF.length).equals(CRLF)
        ? 0
        : this.head.indexOf(END_OF_HEADERS, searchFrom);
      if (end >= 0 && end <= HEADER_SECTION_LIMIT) {
        const err = this.finish(this.head.subarray(0, end).toString('utf8'));
        if (err) return callback(err);
      } else if (this.head.length > HEADER_SECTION_LIMIT + END_OF_HEADERS.length) {
        const err = this.finish(undefined);
        if (err) return callback(err);
      }
    }
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    callback(this.done ? undefined : this.finish(this.head.toString('utf8')));
  }

  private finish(section: string | undefined): Error | undefined {
    this.done = true;
    this.head = Buffer.alloc(0);
    return this.check(section);
  }
}
