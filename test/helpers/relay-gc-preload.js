/**
 * Preloaded into a relay child process by test/protocol-fuzz.test.ts (NODE_OPTIONS="--require <this file>"):
 * on SIGUSR2 it runs two full garbage collections and writes `relay-gc: {"rss":..,"heapUsed":..}` to stderr,
 * so that memory is compared after a forced GC rather than at whatever point V8 happened to collect.
 * (`--expose-gc` is not allowed in NODE_OPTIONS on Node 20; setting the flag at run time and reading `gc`
 * from a new context is the usual way around that.)
 */
'use strict';
const v8 = require('node:v8');
const vm = require('node:vm');

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc');

process.on('SIGUSR2', () => {
  gc();
  setImmediate(() => {
    gc();
    const m = process.memoryUsage();
    process.stderr.write(`relay-gc: ${JSON.stringify({ rss: m.rss, heapUsed: m.heapUsed })}\n`);
  });
});
