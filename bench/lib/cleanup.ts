/**
 * Last-resort cleanup for benchmarks: synchronous actions (kill a child, stop Postfix, remove a temp dir)
 * that run when the process exits or is interrupted (SIGINT/SIGTERM) before a bench's own `finally` has
 * done them. The Postfix master and the relay children are separate processes that would otherwise
 * outlive an interrupted bench.
 *
 *   const forget = onAbort(() => child.kill('SIGKILL'));
 *   ... normal shutdown ...; forget();
 */
const actions = new Set<() => void>();
let installed = false;

function runAll(): void {
  for (const action of [...actions]) {
    actions.delete(action);
    try {
      action();
    } catch {
      // best effort: keep cleaning up the rest
    }
  }
}

/** Register a synchronous cleanup action; returns a function that unregisters it. */
export function onAbort(action: () => void): () => void {
  if (!installed) {
    installed = true;
    process.once('exit', runAll);
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      process.once(signal, () => {
        runAll();
        process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
      });
    }
  }
  actions.add(action);
  return () => actions.delete(action);
}
