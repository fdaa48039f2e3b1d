/**
 * A private Postfix instance for benchmarks: its own config_directory, queue_directory and data_directory
 * under a temp dir, smtpd on 127.0.0.1:<free port>, nothing local (mydestination empty), and outbound SMTP
 * deferred (defer_transports = smtp, relayhost on a closed port) so every accepted message stays durably
 * queued — the same job the relay's spool does. Started with `postfix -c DIR start`, stopped with
 * `postfix -c DIR stop`, temp dir removed. Needs root (or the postfix user) and Debian's postfix package;
 * the system's own Postfix instance (/etc/postfix) is neither read nor touched.
 *
 *   const pf = await startPostfix();
 *   // smtp-source ... 127.0.0.1:pf.port
 *   pf.queuedMessages();   // message files in incoming/active/deferred/hold
 *   await pf.stop();
 *
 * With `relayhost`, the instance relays instead: every message goes to that SMTP server as SES requires it
 * (STARTTLS mandatory, `smtp_tls_security_level = encrypt`, the server's CA as `smtp_tls_CAfile`; SASL AUTH
 * PLAIN/LOGIN with a static username:password), as Postfix is set up in front of SES
 * (https://docs.aws.amazon.com/ses/latest/dg/postfix.html). Rate and retry settings go in `mainCf`.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../../test/helpers/relay-process';
import { onAbort } from './cleanup';

export const POSTFIX = '/usr/sbin/postfix';

export interface PostfixInstance {
  port: number;
  dir: string;
  configDir: string;
  /** Messages in the instance's queue (incoming, active, deferred, hold). */
  queuedMessages(): number;
  /** The instance's own log file (maillog_file). */
  log(): string;
  stop(): Promise<void>;
}

/** An upstream SMTP server for the instance to relay to (e.g. the fake SES). */
export interface PostfixRelayhost {
  host: string;
  port: number;
  username: string;
  password: string;
  /** CA certificate (PEM) that signed the relayhost's certificate; copied into the instance's config. */
  caFile: string;
}

export interface PostfixOptions {
  /** Extra main.cf lines (`name = value`); they override everything else. */
  mainCf?: Record<string, string>;
  /** Relay every message there (STARTTLS + SASL AUTH) instead of keeping it queued. */
  relayhost?: PostfixRelayhost;
}

/**
 * Postfix's retry of deferred mail (a 4xx from the relayhost, e.g. SES's 454 throttling) lowered so a
 * benchmark run is bounded. Defaults are queue_run_delay = minimal_backoff_time = 300s and
 * maximal_backoff_time = 4000s: a refused message would wait at least 5 minutes. Postfix time values are
 * whole seconds, so 1 s is the shortest queue scan. minimal_backoff_time is 2 s, not 1 s: with 1 s the
 * queue manager's next deferred-queue scan regularly finds a message whose delivery agent has not yet
 * released it, logs "skipped, still being delivered" and moves it aside for 60 s (seen in 2 of 4 runs;
 * with 2 s in none of 7). Maximal 4 s keeps Postfix retrying at least every few seconds.
 */
export const FAST_RETRY: Readonly<Record<string, string>> = {
  queue_run_delay: '1s',
  minimal_backoff_time: '2s',
  maximal_backoff_time: '4s',
};

/** main.cf settings for relaying through `r` (the CA copied to `caPath`). */
export function relayhostSettings(r: PostfixRelayhost, caPath: string): Record<string, string> {
  if (/[\s,:]/.test(r.username) || /[\s,]/.test(r.password))
    throw new Error('relayhost credentials must not contain blanks, commas or (user) colons');
  return {
    relayhost: `[${r.host}]:${r.port}`,
    defer_transports: '',
    smtp_tls_security_level: 'encrypt',
    smtp_tls_CAfile: caPath,
    // One log line per TLS session ("Trusted TLS connection established to ...").
    smtp_tls_loglevel: '1',
    // Reuse TLS connections (through tlsproxy, Postfix >= 3.4; off by default): without it every delivery
    // to SES opens a new connection with a new handshake and AUTH.
    smtp_tls_connection_reuse: 'yes',
    smtp_sasl_auth_enable: 'yes',
    // The static map answers every lookup with user:password, whatever the next hop.
    smtp_sasl_password_maps: `static:${r.username}:${r.password}`,
    smtp_sasl_security_options: 'noanonymous',
    smtp_sasl_tls_security_options: 'noanonymous',
    smtp_sasl_mechanism_filter: 'plain, login',
  };
}

/** Is a usable Postfix installed (and are we allowed to run it)? Returns the reason when not. */
export function postfixUnavailable(): string | undefined {
  if (!fs.existsSync(POSTFIX)) return `${POSTFIX} not found (apt-get install postfix)`;
  if (typeof process.getuid === 'function' && process.getuid() !== 0)
    return 'a private Postfix instance needs root (postfix -c DIR start)';
  const r = spawnSync('getent', ['passwd', 'postfix'], { encoding: 'utf8' });
  if (r.status !== 0) return 'no postfix user (install the postfix package)';
  return undefined;
}

// Debian's master.cf with every service unchrooted (the private queue has no chroot jail) and smtpd on
// 127.0.0.1:<port> instead of port 25.
function masterCf(port: number): string {
  return `${[
    `127.0.0.1:${port} inet n - n - - smtpd`,
    'pickup    unix  n - n 60    1 pickup',
    'cleanup   unix  n - n -     0 cleanup',
    'qmgr      unix  n - n 300   1 qmgr',
    'tlsmgr    unix  - - n 1000? 1 tlsmgr',
    'tlsproxy  unix  - - n -     0 tlsproxy',
    'rewrite   unix  - - n -     - trivial-rewrite',
    'bounce    unix  - - n -     0 bounce',
    'defer     unix  - - n -     0 bounce',
    'trace     unix  - - n -     0 bounce',
    'verify    unix  - - n -     1 verify',
    'flush     unix  n - n 1000? 0 flush',
    'proxymap  unix  - - n -     - proxymap',
    'proxywrite unix - - n -     1 proxymap',
    'smtp      unix  - - n -     - smtp',
    'relay     unix  - - n -     - smtp',
    'showq     unix  n - n -     - showq',
    'error     unix  - - n -     - error',
    'retry     unix  - - n -     - error',
    'discard   unix  - - n -     - discard',
    'local     unix  - n n -     - local',
    'virtual   unix  - n n -     - virtual',
    'lmtp      unix  - - n -     - lmtp',
    'anvil     unix  - - n -     1 anvil',
    'scache    unix  - - n -     1 scache',
    'postlog   unix-dgram n - n - 1 postlogd',
  ].join('\n')}\n`;
}

function mainCf(dir: string, closedPort: number, extra: Record<string, string>): string {
  const settings: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: path.join(dir, 'queue'),
    data_directory: path.join(dir, 'data'),
    myhostname: 'postfix.bench.test',
    mydestination: '',
    relay_domains: '',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    mynetworks: '127.0.0.0/8',
    smtpd_relay_restrictions: 'permit_mynetworks, reject',
    smtpd_recipient_restrictions: 'permit_mynetworks, reject',
    // Keep everything queued: the smtp transport is deferred, and would go nowhere anyway.
    defer_transports: 'smtp',
    relayhost: `[127.0.0.1]:${closedPort}`,
    alias_maps: '',
    alias_database: '',
    biff: 'no',
    smtpd_peername_lookup: 'no',
    maillog_file: path.join(dir, 'maillog'),
    maillog_file_prefixes: dir,
    ...extra,
  };
  return `${Object.entries(settings)
    .map(([k, v]) => `${k} = ${v}`)
    .join('\n')}\n`;
}

function postfixCmd(configDir: string, ...args: string[]): { status: number | null; output: string } {
  const r = spawnSync(POSTFIX, ['-c', configDir, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

function countFiles(dir: string): number {
  if (!fs.existsSync(dir)) return 0;
  let n = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) n += countFiles(path.join(dir, e.name));
    else if (e.isFile()) n += 1;
  }
  return n;
}

function masterPid(dir: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(path.join(dir, 'queue', 'pid', 'master.pid'), 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitForPort(port: number, timeoutMs: number): Promise<boolean> {
  const net = await import('node:net');
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return true;
    await sleep(100);
  }
  return false;
}

export async function startPostfix(options: PostfixOptions = {}): Promise<PostfixInstance> {
  const why = postfixUnavailable();
  if (why) throw new Error(why);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-postfix-'));
  // Postfix daemons run as the postfix user: they must be able to reach the queue below the temp dir.
  fs.chmodSync(dir, 0o755);
  const configDir = path.join(dir, 'etc');
  for (const d of ['etc', 'queue', 'data']) fs.mkdirSync(path.join(dir, d));
  const ids = spawnSync('id', ['-u', 'postfix'], { encoding: 'utf8' });
  fs.chownSync(path.join(dir, 'data'), Number(ids.stdout.trim()), 0);
  for (const f of ['postfix-files', 'dynamicmaps.cf']) {
    if (fs.existsSync(`/etc/postfix/${f}`)) fs.copyFileSync(`/etc/postfix/${f}`, path.join(configDir, f));
  }
  for (const d of ['postfix-files.d', 'dynamicmaps.cf.d']) {
    if (fs.existsSync(`/etc/postfix/${d}`))
      fs.cpSync(`/etc/postfix/${d}`, path.join(configDir, d), { recursive: true });
  }
  const port = await freePort();
  const closedPort = await freePort();
  let relaying: Record<string, string> = {};
  if (options.relayhost) {
    // The smtp client runs as the postfix user: give it its own readable copy of the CA.
    const caPath = path.join(configDir, 'relayhost-ca.pem');
    fs.copyFileSync(options.relayhost.caFile, caPath);
    fs.chmodSync(caPath, 0o644);
    relaying = relayhostSettings(options.relayhost, caPath);
  }
  fs.writeFileSync(
    path.join(configDir, 'main.cf'),
    mainCf(dir, closedPort, { ...relaying, ...(options.mainCf ?? {}) }),
  );
  fs.writeFileSync(path.join(configDir, 'master.cf'), masterCf(port));

  let stopped = false;
  // If the bench is interrupted or throws past its finally, the Postfix master must not outlive us.
  const forget = onAbort(() => {
    postfixCmd(configDir, 'stop');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const instance: PostfixInstance = {
    port,
    dir,
    configDir,
    queuedMessages: () =>
      ['incoming', 'active', 'deferred', 'hold'].reduce(
        (n, q) => n + countFiles(path.join(dir, 'queue', q)),
        0,
      ),
    log: () => {
      try {
        return fs.readFileSync(path.join(dir, 'maillog'), 'utf8');
      } catch {
        return '';
      }
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      const pid = masterPid(dir);
      postfixCmd(configDir, 'stop');
      const deadline = Date.now() + 15_000;
      while (pid && alive(pid) && Date.now() < deadline) await sleep(100);
      if (pid && alive(pid)) process.kill(pid, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
      forget();
    },
  };

  // `check` creates the queue's subdirectories with the right owners (post-install create-missing).
  const check = postfixCmd(configDir, 'check');
  if (check.status !== 0) {
    await instance.stop();
    throw new Error(`postfix check failed: ${check.output}`);
  }
  const start = postfixCmd(configDir, 'start');
  if (start.status !== 0 || !(await waitForPort(port, 15_000))) {
    const log = instance.log();
    await instance.stop();
    throw new Error(`postfix start failed: ${start.output}\n${log.slice(-2000)}`);
  }
  return instance;
}
