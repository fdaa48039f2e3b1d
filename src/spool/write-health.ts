/**
 * Whether the spool can be written, as the last write found it: a store, record, settle or probe that
 * hit the disk's limits (SQLITE_FULL, SQLITE_IOERR_*, SQLITE_READONLY, ENOSPC, EIO, EROFS, EDQUOT, ...)
 * makes it unwritable; the next write that commits makes it writable again. The dispatcher stops sending
 * while it is unwritable (src/egress/dispatcher.ts), `/readyz` reports `"spool": "failing"` and the gauge
 * `ses_relay_spool_writable` is 0. One log line per change (`spool:unwritable`, `spool:writable`).
 */
import type { Logger } from '../observability/logger';
import { spoolWritable } from './spool-metrics';
import { SpoolWriteError, type SpoolHealth } from './spool';

const STORAGE_ERRNOS = new Set([
  'ENOSPC',
  'EDQUOT',
  'EIO',
  'EROFS',
  'EACCES',
  'EPERM',
  'ENOTDIR',
  'ENOENT',
  'EBADF',
]);
/** SQLite result codes (better-sqlite3's SqliteError.code) that mean the storage refused the write. */
const STORAGE_SQLITE = /^SQLITE_(FULL|IOERR|READONLY|CANTOPEN|CORRUPT|NOTADB|PROTOCOL|BUSY|NOLFS|PERM)/;

/** True when `err` (or its cause chain) says the storage refused a write, not that the caller erred. */
export function isStorageError(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && (STORAGE_ERRNOS.has(code) || STORAGE_SQLITE.test(code))) return true;
    if (e instanceof Error && e.message === 'SQLite rolled back the spool transaction') return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** Wrap a storage error in SpoolWriteError (callers tell write failures from their own mistakes by class). */
export function asWriteError(err: unknown, what: string): unknown {
  if (err instanceof SpoolWriteError || !isStorageError(err)) return err;
  return new SpoolWriteError(what, err);
}

export class WriteHealth {
  private state: SpoolHealth = { writable: true, since: Date.now() };

  constructor(
    private readonly dir: string,
    private readonly logger: Logger,
  ) {
    spoolWritable.set(1);
  }

  get(): SpoolHealth {
    return { ...this.state };
  }

  failed(err: unknown): void {
    const error = describe(err);
    if (!this.state.writable) {
      this.state.error = error;
      return;
    }
    this.state = { writable: false, since: Date.now(), error };
    spoolWritable.set(0);
    this.logger.error(
      { event: 'spool:unwritable', dir: this.dir, err: error },
      'spool cannot be written: ingress answers 452 4.3.1 and delivery pauses until writes work again',
    );
  }

  succeeded(): void {
    if (this.state.writable) return;
    const downMs = Date.now() - this.state.since;
    this.state = { writable: true, since: Date.now() };
    spoolWritable.set(1);
    this.logger.info(
      { event: 'spool:writable', dir: this.dir, downMs },
      'spool writes work again: delivery resumes',
    );
  }
}

function describe(err: unknown): string {
  const parts: string[] = [];
  for (let e = err, depth = 0; e && depth < 3; depth++) {
    const code = (e as { code?: unknown }).code;
    parts.push(
      `${e instanceof Error ? e.message : String(e)}${typeof code === 'string' ? ` (${code})` : ''}`,
    );
    e = (e as { cause?: unknown }).cause;
  }
  return parts.join(': ');
}
