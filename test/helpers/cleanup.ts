/**
 * Things a test file opened (relay processes, fake SES, Redis, clients), closed once every test in the file
 * has run, last opened first; a failing close does not stop the others.
 */
import { after } from 'node:test';

export function cleanupAfterAll(): { push(fn: () => unknown): void } {
  const fns: Array<() => unknown> = [];
  after(async () => {
    for (const fn of fns.reverse())
      await Promise.resolve()
        .then(fn)
        .catch(() => {});
  });
  return { push: (fn) => void fns.push(fn) };
}
