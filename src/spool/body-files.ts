/**
 * Reading a message body off its stream and the file-system helpers of the spool. Small bodies are
 * kept in memory (stored inline in the database); larger ones are streamed to `<id>.tmp`, fsynced and
 * renamed to `<id>.eml`, so a 40 MB message never sits in memory whole.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { isQueueId } from './queue-id';
import type { Readable } from 'node:stream';

export interface ReadBody {
  size: number;
  /** Inline content, or undefined when the body is in `<bodiesDir>/<id>.eml`. */
  content?: Buffer;
}

export function bodyFilePath(bodiesDir: string, id: string): string {
  return path.join(bodiesDir, `${id}.eml`);
}

/**
 * Consume `body`. Up to `inlineMax` bytes stay in memory; past that, what was read so far and
 * everything after it is appended to `<id>.tmp`, which is fsynced and renamed to `<id>.eml` (the
 * directory fsync is left to the caller, once per batch). On a write error the rest of the stream is
 * still drained, so the SMTP session can finish DATA and get its reply; on any error no file is left.
 */
export async function readBody(
  body: Readable,
  options: { id: string; bodiesDir: string; inlineMax: number },
): Promise<ReadBody> {
  const tmpFile = path.join(options.bodiesDir, `${options.id}.tmp`);
  const emlFile = bodyFilePath(options.bodiesDir, options.id);
  const chunks: Buffer[] = [];
  let size = 0;
  let file: fsp.FileHandle | undefined;
  let writeError: unknown;
  try {
    for await (const chunk of body) {
      const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
      size += buffer.length;
      if (writeError !== undefined) continue; // drain the rest
      try {
        if (file) {
          await writeAll(file, buffer);
        } else {
          chunks.push(buffer);
          if (size > options.inlineMax) {
            file = await fsp.open(tmpFile, 'wx');
            for (const part of chunks.splice(0)) await writeAll(file, part);
          }
        }
      } catch (err) {
        writeError = err;
        chunks.length = 0;
      }
    }
    if (writeError !== undefined) throw writeError;
    if (!file) return { size, content: Buffer.concat(chunks, size) };
    await file.sync();
    await file.close();
    file = undefined;
    await fsp.rename(tmpFile, emlFile);
    return { size };
  } catch (err) {
    chunks.length = 0;
    if (file) await file.close().catch(() => undefined);
    await removeQuietly(tmpFile);
    await removeQuietly(emlFile);
    throw err;
  }
}

export async function writeAll(file: fsp.FileHandle, buffer: Buffer): Promise<void> {
  let offset = 0;
  while (offset < buffer.length) {
    const { bytesWritten } = await file.write(buffer, offset, buffer.length - offset);
    offset += bytesWritten;
  }
}

/** fsync a directory so that file creations, renames and removals in it are durable. */
export async function fsyncDir(dir: string, strict = false): Promise<void> {
  let handle: fsp.FileHandle | undefined;
  try {
    handle = await fsp.open(dir, 'r');
    await handle.sync();
  } catch (err) {
    if (strict) throw err;
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

export async function removeQuietly(file: string): Promise<void> {
  await fsp.rm(file, { force: true }).catch(() => undefined);
}

/** Write `bytes` zeros to a fresh file in `dir`, fsync it and remove it; throws what the disk said. */
export async function probeDirectory(dir: string, bytes: number): Promise<void> {
  const probe = path.join(dir, `.probe-${process.pid}-${Date.now().toString(36)}`);
  let file: fsp.FileHandle | undefined;
  try {
    file = await fsp.open(probe, 'w');
    await writeAll(file, Buffer.alloc(bytes));
    await file.sync();
  } finally {
    if (file) await file.close().catch(() => undefined);
    await removeQuietly(probe);
  }
}

/**
 * Remove `.tmp` leftovers, probe files and `.eml` files whose row never committed (a crash before the
 * COMMIT); returns how many. `hasRow(id)` tells whether the database has message `id`.
 */
export async function removeOrphanBodies(
  bodiesDir: string,
  hasRow: (id: string) => boolean,
): Promise<number> {
  let removed = 0;
  for (const name of await fsp.readdir(bodiesDir)) {
    const match = /^(.*)\.(tmp|eml)$/.exec(name);
    if (!match && !name.startsWith('.probe-')) continue;
    if (match && match[2] === 'eml' && isQueueId(match[1]) && hasRow(match[1])) continue;
    await removeQuietly(path.join(bodiesDir, name));
    removed += 1;
  }
  if (removed > 0) await fsyncDir(bodiesDir);
  return removed;
}
