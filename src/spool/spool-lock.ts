/**
 * One relay per spool directory: `<dir>/spool.lock` is held with an exclusive, non-blocking flock(2) for
 * as long as the spool is open. Two relays on one SPOOL_DIR would lease the same rows (and deliver them
 * twice), and one's orphan-body cleanup at open would delete the other's body files that are fsynced but
 * not yet committed. The kernel drops the lock when the process dies (kill -9 included), so a stale lock
 * never blocks a restart; the file itself stays (removing it would race with a process that just opened
 * it). Like Postfix's master.lock, the file holds the owner's pid, for the error message only, and the word
 * `queue` when the holder is the queue tool acting on a stopped relay's spool (`npm run queue -- hold ...`):
 * a relay starting meanwhile waits for it (a few milliseconds) instead of refusing to start.
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
    /** What the holder wrote after its pid (`queue` for the queue tool), if anything. */
    readonly holder?: string,
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

/** The word the queue tool writes after its pid into the lock file. */
export const QUEUE_TOOL_HOLDER = 'queue';

/**
 * Take the lock of spool directory `dir` (which must exist), or throw SpoolLockedError. `holder` is written
 * after the pid (QUEUE_TOOL_HOLDER for the queue tool).
 */
export function lockSpool(dir: string, holder?: string): SpoolLock {
  const file = path.join(dir, LOCK_FILE);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
  try {
    flockSync(fd, 'exnb');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    fs.closeSync(fd);
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') {
      const owner = lockOwner(file);
      throw new SpoolLockedError(dir, owner.pid, owner.holder);
    }
    throw err;
  }
  try {
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}${holder ? ` ${holder}` : ''}\n`, 0);
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

/**
 * lockSpool, but while the queue tool holds the lock (it acts on a stopped relay's spool in one short
 * transaction) try again every 50 ms for up to `waitMs`. Any other holder fails at once.
 */
export async function lockSpoolWaiting(dir: string, waitMs: number, holder?: string): Promise<SpoolLock> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return lockSpool(dir, holder);
    } catch (err) {
      const byQueueTool = err instanceof SpoolLockedError && err.holder === QUEUE_TOOL_HOLDER;
      if (!byQueueTool || Date.now() >= deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/** The pid (and holder word) written by the lock's holder, when it could be read. */
function lockOwner(file: string): { pid?: number; holder?: string } {
  try {
    const [first, holder] = fs.readFileSync(file, 'utf8').trim().split(/\s+/);
    const pid = Number.parseInt(first, 10);
    return { pid: Number.isInteger(pid) && pid > 0 ? pid : undefined, holder };
  } catch {
    return {};
  }
}
