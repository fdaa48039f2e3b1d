/**
 * Line-ending normalisation of message bodies (our defence against SMTP smuggling).
 *
 * The rule (copy to README, "SMTP smuggling"):
 *
 * - End of DATA is recognised ONLY as `<CRLF>.<CRLF>` (smtp-server 3.21's parser compares exactly
 *   these five bytes, or `.<CRLF>` as the very first line). Every other "end-of-data lookalike" —
 *   `<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CRLF>`, `<CRLF>.<LF>`, `<CRLF>.<CR>`, `<CR>.<CRLF>`, `<LF>.<CR>` —
 *   is message content and is stored as part of the ONE message being received.
 * - Bare line endings in the body are then NORMALISED, like Postfix's
 *   `smtpd_forbid_bare_newline = normalize`: a bare LF becomes CRLF and a bare CR becomes CRLF (a CR
 *   directly followed by LF is already a proper line ending and is kept). The stored body therefore has
 *   only CRLF line endings, so every line is seen the same way by us, by the egress (which dot-stuffs
 *   each line that starts with `.` when it sends the message upstream) and by Amazon SES: no byte
 *   sequence in a stored body can end the DATA phase upstream early and start a second message.
 *
 * smtp-server has already removed the transparency dots (`..` -> `.` at the start of a line) before
 * the bytes reach this transform; the egress adds them back.
 */
import { Transform, type TransformCallback, type TransformOptions } from 'node:stream';

const CR = 0x0d;
const LF = 0x0a;
const CRLF = Buffer.from('\r\n');

/**
 * Normalises one chunk. `pendingCr` says the previous chunk ended with a CR whose meaning depends on
 * this chunk's first byte; the result says whether this chunk ends that way.
 */
function normalizeChunk(chunk: Buffer, pendingCr: boolean): { parts: Buffer[]; pendingCr: boolean } {
  const parts: Buffer[] = [];
  let start = 0;
  let i = 0;
  if (pendingCr && chunk.length > 0) {
    parts.push(CRLF);
    pendingCr = false;
    if (chunk[0] === LF) i = start = 1;
  }
  for (; i < chunk.length; i++) {
    const byte = chunk[i];
    if (byte !== CR && byte !== LF) continue;
    if (i > start) parts.push(chunk.subarray(start, i));
    if (byte === LF) {
      parts.push(CRLF); // bare LF
    } else if (i + 1 < chunk.length) {
      parts.push(CRLF); // CRLF or bare CR: both become CRLF
      if (chunk[i + 1] === LF) i++;
    } else {
      pendingCr = true; // CR at the end of the chunk: decided by the next chunk (or the end)
    }
    start = i + 1;
  }
  if (start < chunk.length) parts.push(chunk.subarray(start));
  return { parts, pendingCr };
}

/** The normalised message would be larger than the limit (it fails the stream before its end). */
export class MessageTooBigError extends Error {
  constructor(readonly limit: number) {
    super(`message exceeds the size limit of ${limit} bytes`);
    this.name = 'MessageTooBigError';
  }
}

export interface LineEndingNormalizerOptions extends TransformOptions {
  /**
   * Largest output in bytes (SMTP_MAX_MESSAGE_SIZE): the limit applies to what is stored, after bare LF
   * and CR became CRLF, so a message of bare LFs cannot pass the limit and be stored at twice its size.
   * Going over fails the stream with MessageTooBigError before it ends, so nothing over it is stored.
   */
  maxBytes?: number;
}

/** Converts bare LF and bare CR to CRLF; CRLF passes unchanged. Streaming: state spans chunks. */
export class LineEndingNormalizer extends Transform {
  /** A CR was the last byte seen and we do not know yet whether an LF follows. */
  private pendingCr = false;
  private readonly maxBytes: number;
  /** Bytes written out so far (the stored size). */
  bytesOut = 0;

  constructor(options: LineEndingNormalizerOptions = {}) {
    const { maxBytes, ...transformOptions } = options;
    super(transformOptions);
    this.maxBytes = maxBytes ?? Infinity;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const result = normalizeChunk(chunk, this.pendingCr);
    this.pendingCr = result.pendingCr;
    const out = result.parts.length === 1 ? result.parts[0] : Buffer.concat(result.parts);
    this.emitCounted(out, callback);
  }

  override _flush(callback: TransformCallback): void {
    if (this.pendingCr) {
      this.pendingCr = false;
      this.emitCounted(CRLF, callback);
      return;
    }
    callback();
  }

  private emitCounted(out: Buffer, callback: TransformCallback): void {
    // The bytes still pending (a CR at the end of the chunk) will be 2 more; they are counted when known.
    if (this.bytesOut + out.length > this.maxBytes) {
      callback(new MessageTooBigError(this.maxBytes));
      return;
    }
    this.bytesOut += out.length;
    if (out.length) callback(null, out);
    else callback();
  }
}

/** Normalises a whole buffer at once (same rule as LineEndingNormalizer). */
export function normalizeLineEndings(input: Buffer): Buffer {
  const result = normalizeChunk(input, false);
  if (result.pendingCr) result.parts.push(CRLF);
  return Buffer.concat(result.parts);
}
