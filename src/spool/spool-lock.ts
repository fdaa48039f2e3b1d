/**
 * One relay per spool directory: `<dir>/spool.lock` is held with an exclusive, non-blocking flock(2) for
 * as long as the spool is open. Two relays on one SPOOL_DIR would lease the same rows (and deliver them
 * twice), and one's orphan-body cleanup at open would delete the other's body files that are fsynced but
 * not yet committed. The kernel drops the lock when the process dies (kill -9 included), so a stale lock
 * never blocks a restart; the file itself stays (removing it would race with a process that just opened
 * it). Like Postfix's master.lock, the file holds the owner's pid, for the error message only.
 *
 * Why flock and not SQLite's `locking_mode=EXCLUSIVE`: in WAL mode an exclusive connection keeps its
 * wal-index in private memory and holds the database lock, so it also shuts out read-only connections —
 * and the queue inspector (spool-inspector.ts) must be able to read the spool while the relay runs.
 * flock comes from fs-ext (Node has no flock of its own); fds are opened close-on-exec by libuv, so child
 * processes do not inherit the lock.
 */
import fs from 'node:fs';
import path from 'node:path';
import { flockSync } from 'fs-ext';

/** Another process holds the spool. */
export class SpoolLockedError extends Error {
  override name = 'SpoolLockedError';
  constructor(
    readonly dir: string,
    readonly pid: number | undefined,
  ) {
    super(`spool ${dir} is in use by another process (${pid === undefined ? 'pid unknown' : `pid ${pid}`})`);
  }

  /** main.ts prints `start failed: ${String(err)}`: the message alone reads as one clear line. */
  override toString(): string {
    return this.message;
  }
}

export interface SpoolLock {
  readonly path: string;
  release(): void;
}

export const LOCK_FILE = 'spool.lock';

/** Take the lock of spool directory `dir` (which must exist), or throw SpoolLockedError. */
export function lockSpool(dir: string): SpoolLock {
  const file = path.join(dir, LOCK_FILE);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
  try {
    flockSync(fd, 'exnb');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    fs.closeSync(fd);
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') throw new SpoolLockedError(dir, lockOwner(file));
    throw err;
  }
  try {
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n`, 0);
  } catch {
    // A full disk must not stop the relay from starting (it can still deliver); the pid is only a hint.
  }
  let released = false;
  return {
    path: file,
    release() {
      if (released) return;
      released = true;
      try {
        flockSync(fd, 'un');
      } finally {
        fs.closeSync(fd);
      }
    },
  };
}

/** The pid written by the lock's holder, when it could be read. */
function lockOwner(file: string): number | undefined {
  try {
    const pid = Number.parseInt(fs.readFileSync(file, 'utf8').trim(), 10);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}
