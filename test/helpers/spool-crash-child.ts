/**
 * Child process for test/spool-crash.test.ts: stores messages into the spool given as argv[2] in a
 * bounded loop (a few concurrent writers) and prints `<seq> <queueId>` for every store that resolved.
 * The parent SIGKILLs it mid-run and checks that every acknowledged message survived.
 */
import { Readable } from 'node:stream';
import { SqliteSpool } from '../../src/spool/sqlite-spool';

export const CRASH_CHILD_MAX_MESSAGES = 20_000;
const CONCURRENCY = 8;
const TIME_LIMIT_MS = 20_000;
/** Small enough that every 5th message (a 70 KB body) goes to a body file. */
export const CRASH_CHILD_INLINE_MAX = 32 * 1024;

/** Deterministic body for message `seq`: CRLF text plus pseudo-random binary; every 5th is large. */
export function crashBodyFor(seq: number): Buffer {
  const size = seq % 5 === 0 ? 70_000 + (seq % 13) : 200 + (seq % 997);
  const body = Buffer.alloc(size);
  let x = (seq * 2654435761) >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    body[i] = x & 0xff;
  }
  body.write(`Subject: message ${seq}\r\n\r\n`, 0, 'latin1');
  return body;
}

export function crashRecipientFor(seq: number): string {
  return `rcpt-${seq}@example.com`;
}

async function main(): Promise<void> {
  const dir = process.argv[2];
  if (!dir) throw new Error('usage: spool-crash-child <spool dir>');
  const spool = await SqliteSpool.open({ dir, inlineBodyMaxBytes: CRASH_CHILD_INLINE_MAX });
  process.stdout.write('ready\n');
  const deadline = Date.now() + TIME_LIMIT_MS;
  let next = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < CRASH_CHILD_MAX_MESSAGES && Date.now() < deadline) {
        const seq = next++;
        const body = crashBodyFor(seq);
        const chunks: Buffer[] = [];
        for (let i = 0; i < body.length; i += 8192) chunks.push(body.subarray(i, i + 8192));
        const id = await spool.store(
          { mailFrom: 'sender@example.com', recipients: [crashRecipientFor(seq)] },
          Readable.from(chunks, { objectMode: false }),
          { clientAddress: '127.0.0.1' },
        );
        // Pipes are written synchronously on Linux: once this returns, the line survives SIGKILL.
        process.stdout.write(`${seq} ${id}\n`);
      }
    }),
  );
  await spool.close();
}

if (require.main === module) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
