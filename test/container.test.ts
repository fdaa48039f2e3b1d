/**
 * Container smoke test: builds the real Dockerfile with podman (base image: a local Debian + Node stand-in
 * made by scripts/container-base-image.sh, since no registry is reachable), runs it next to a fake SES,
 * relays mail through it, checks /healthz, /readyz, /metrics and the image's HEALTHCHECK, runs the
 * operator's tools inside it (`ses-relay queue summary`, `ses-relay blocklist add` against dynalite:
 * compiled JavaScript, no dev dependencies), stops it with SIGTERM (clean exit 0) and starts a second
 * container on the same spool volume, which delivers the message the first one left deferred.
 *
 * Machines without podman/runc (or without root for debootstrap when the base image is missing) SKIP
 * this test with the reason printed; it never passes silently.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import { startDynalite } from './helpers/dynalite';
import { FAKE_REPLIES, startFakeSes, type FakeSes } from './helpers/fake-ses';
import { freePort, metricValue, ROOT, TEST_CA } from './helpers/relay-process';

const BASE_IMAGE = 'localhost/node-base:test';
const IMAGE = 'localhost/ses-email-service:test';
/** Flags every podman build/run needs on these machines (docs/operations.md, "Building without Docker"). */
const PODMAN_FLAGS = ['--runtime', 'runc', '--ulimit', 'nofile=20000:20000', '--ulimit', 'nproc=1000:1000'];
const SOURCE_URL = 'https://git.example.com/mail/ses-email-service';
const TAG = `${process.pid}-${Date.now().toString(36)}`;

/** Commands running now and containers started, so a runner timeout (SIGTERM) leaves nothing behind. */
const children = new Set<ChildProcess>();
const containers = new Set<string>();
const volumes = new Set<string>();
process.once('SIGTERM', () => {
  for (const child of children) child.kill('SIGKILL');
  for (const name of containers) {
    spawnSync('podman', ['rm', '--force', '--time', '0', name], { stdio: 'ignore' });
  }
  for (const name of volumes) spawnSync('podman', ['volume', 'rm', '--force', name], { stdio: 'ignore' });
  process.exit(143);
});

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (killed after timeoutMs), capturing its output. */
function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${timeoutMs} ms]`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (err) => {
      children.delete(child);
      clearTimeout(timer);
      resolve({ code: null, stdout, stderr: stderr + String(err) });
    });
    child.once('close', (code) => {
      children.delete(child);
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const tail = (text: string, lines = 40) => text.split('\n').slice(-lines).join('\n');

function skipLoudly(t: TestContext, reason: string): void {
  console.error(`\n*** SKIPPED container smoke test: ${reason} ***\n`);
  t.skip(reason);
}

/** Why containers cannot run here, or undefined when they can. */
async function containerBlocker(): Promise<string | undefined> {
  const podman = await run('podman', ['--version'], 15_000);
  if (podman.code !== 0) return 'podman is not installed (apt-get install podman runc)';
  const runc = await run('runc', ['--version'], 15_000);
  if (runc.code !== 0) return 'runc is not installed (apt-get install runc)';
  if ((await run('podman', ['image', 'exists', BASE_IMAGE])).code === 0) return canRunContainers();
  if (process.getuid?.() !== 0) {
    return `base image ${BASE_IMAGE} is missing and building it needs root (debootstrap): run scripts/container-base-image.sh as root`;
  }
  if ((await run('debootstrap', ['--version'], 15_000)).code !== 0) {
    return `base image ${BASE_IMAGE} is missing and debootstrap is not installed (apt-get install debootstrap)`;
  }
  const base = await run(path.join(ROOT, 'scripts', 'container-base-image.sh'), [BASE_IMAGE], 240_000);
  if (base.code !== 0) {
    return `building ${BASE_IMAGE} failed (no Debian mirror reachable?):\n${tail(base.stderr, 15)}`;
  }
  return canRunContainers();
}

/** podman is installed, but can it run a container here (nested in an unprivileged container, say)? */
async function canRunContainers(): Promise<string | undefined> {
  const probe = await run(
    'podman',
    ['run', '--rm', ...PODMAN_FLAGS, '--network', 'host', BASE_IMAGE, 'node', '-e', '0'],
    60_000,
  );
  if (probe.code === 0) return undefined;
  return `podman cannot run containers on this machine:\n${tail(probe.stderr, 10)}`;
}

async function waitForHttp(url: string, container: string, timeoutMs: number): Promise<Response> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      if (res.ok) return res;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = String(err);
    }
    const state = await run('podman', ['inspect', '--format', '{{.State.Running}}', container]);
    if (state.stdout.trim() === 'false') {
      const logs = await run('podman', ['logs', container]);
      throw new Error(
        `container ${container} exited while waiting for ${url}:\n${tail(logs.stdout + logs.stderr)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  const logs = await run('podman', ['logs', container]);
  throw new Error(`${url} not OK after ${timeoutMs} ms (${last}):\n${tail(logs.stdout + logs.stderr)}`);
}

interface RelayContainer {
  name: string;
  smtpPort: number;
  metricsPort: number;
}

/** Starts the image; with `ses` undefined it runs in embedded mode (outbox in the volume). */
async function runRelayContainer(
  name: string,
  volume: string,
  ses: FakeSes | undefined,
  env: Record<string, string> = {},
  podmanArgs: string[] = [],
): Promise<RelayContainer> {
  const smtpPort = await freePort();
  const metricsPort = await freePort();
  const vars: Record<string, string> = {
    SMTP_HOST: '127.0.0.1',
    SMTP_PORT: String(smtpPort),
    METRICS_HOST: '127.0.0.1',
    METRICS_PORT: String(metricsPort),
    SERVER_FQDN: 'relay.test',
    SHUTDOWN_TIMEOUT: '10s',
    ...(ses && {
      AWS_SMTP_HOST: '127.0.0.1',
      AWS_SMTP_PORT: String(ses.port),
      AWS_SMTP_USERNAME: ses.username,
      AWS_SMTP_PASSWORD: ses.password,
      NODE_EXTRA_CA_CERTS: '/etc/ses-relay/ca.crt',
    }),
    ...env,
  };
  const args = [
    'run',
    '--detach',
    '--name',
    name,
    ...PODMAN_FLAGS,
    // Host network: the container reaches the fake SES on 127.0.0.1 and the test reaches the relay.
    '--network',
    'host',
    // No systemd timer for the HEALTHCHECK here; the test runs it itself (podman healthcheck run).
    '--health-interval',
    'disable',
    '--volume',
    `${volume}:/var/spool/ses-relay`,
    '--volume',
    `${TEST_CA}:/etc/ses-relay/ca.crt:ro`,
    ...Object.entries(vars).flatMap(([k, v]) => ['--env', `${k}=${v}`]),
    ...podmanArgs,
    IMAGE,
  ];
  const started = await run('podman', args, 60_000);
  assert.equal(started.code, 0, `podman run failed:\n${started.stderr}`);
  return { name, smtpPort, metricsPort };
}

async function sendMail(port: number, to: string[], subject: string): Promise<void> {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  try {
    await transport.sendMail({ from: 'app@example.com', to, subject, text: `${subject}\n` });
  } finally {
    transport.close();
  }
}

/** Stops a container with SIGTERM (SIGKILL only after 30 s) and returns its exit code and logs. */
async function stopContainer(name: string): Promise<{ exitCode: number; logs: string; ms: number }> {
  const t0 = Date.now();
  const stopped = await run('podman', ['stop', '--time', '30', name], 60_000);
  const ms = Date.now() - t0;
  assert.equal(stopped.code, 0, `podman stop failed: ${stopped.stderr}`);
  const state = await run('podman', ['inspect', '--format', '{{.State.ExitCode}}', name]);
  const logs = await run('podman', ['logs', name]);
  return { exitCode: Number(state.stdout.trim()), logs: logs.stdout + logs.stderr, ms };
}

async function volumeMount(volume: string): Promise<string> {
  return (await run('podman', ['volume', 'inspect', '--format', '{{.Mountpoint}}', volume])).stdout.trim();
}

/** Files under root, as paths relative to it. */
function listFiles(root: string, dir = root): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const p = path.join(dir, entry.name);
    return entry.isDirectory() ? listFiles(root, p) : [path.relative(root, p)];
  });
}

test(
  'container image: builds, relays mail to SES, drains on SIGTERM, keeps its spool',
  { timeout: 420_000 },
  async (t) => {
    const blocker = await containerBlocker();
    if (blocker) return skipLoudly(t, blocker);

    const revision = (await run('git', ['rev-parse', 'HEAD'])).stdout.trim() || 'unknown';
    const imageId = async () =>
      (await run('podman', ['image', 'inspect', '--format', '{{.Id}}', IMAGE])).stdout.trim();
    const previous = await imageId();
    const build = await run(
      'podman',
      [
        'build',
        ...PODMAN_FLAGS,
        '--network',
        'host',
        // Docker image format: OCI images cannot carry a HEALTHCHECK.
        '--format',
        'docker',
        '--build-arg',
        `NODE_IMAGE=${BASE_IMAGE}`,
        '--build-arg',
        'VERSION=0.0.0-test',
        '--build-arg',
        `REVISION=${revision}`,
        '--build-arg',
        `SOURCE=${SOURCE_URL}`,
        '--tag',
        IMAGE,
        '--file',
        path.join(ROOT, 'Dockerfile'),
        ROOT,
      ],
      360_000,
    );
    assert.equal(build.code, 0, `podman build failed:\n${tail(build.stdout + build.stderr, 60)}`);
    // The previous test image is now untagged: remove it so repeated runs do not fill the disk (the
    // cached build layers stay).
    if (previous && previous !== (await imageId())) await run('podman', ['rmi', previous]);

    await t.test('image metadata: non-root, ports, volume, healthcheck, OCI labels', async () => {
      const inspect = await run('podman', ['image', 'inspect', IMAGE]);
      assert.equal(inspect.code, 0, inspect.stderr);
      const [image] = JSON.parse(inspect.stdout) as Array<{
        Config: {
          User?: string;
          ExposedPorts?: Record<string, unknown>;
          Volumes?: Record<string, unknown>;
          Labels?: Record<string, string>;
          Cmd?: string[];
          Entrypoint?: string[] | null;
          Env?: string[];
        };
        HealthCheck?: { Test?: string[] };
        Healthcheck?: { Test?: string[] };
      }>;
      const c = image.Config;
      assert.equal(c.User, 'node');
      assert.ok(c.ExposedPorts?.['1025/tcp'] && c.ExposedPorts?.['9464/tcp'], 'EXPOSE 1025 9464');
      assert.ok(c.ExposedPorts?.['2525/tcp'], 'EXPOSE 2525 (the autoresponder)');
      assert.ok(c.Volumes?.['/var/spool/ses-relay'], 'VOLUME /var/spool/ses-relay');
      assert.deepEqual(c.Cmd, ['node', 'dist/main.js'], 'exec-form CMD so node is PID 1 and gets SIGTERM');
      assert.ok(!c.Entrypoint?.length, 'no shell entrypoint in front of node');
      assert.equal(c.Labels?.['org.opencontainers.image.version'], '0.0.0-test');
      assert.equal(c.Labels?.['org.opencontainers.image.revision'], revision);
      assert.equal(c.Labels?.['org.opencontainers.image.source'], SOURCE_URL);
      const health = image.HealthCheck ?? image.Healthcheck;
      assert.ok(health?.Test?.join(' ').includes('/healthz'), 'HEALTHCHECK on /healthz');
      assert.ok(
        c.Env?.some((e) => e.startsWith('SPOOL_DIR=/var/spool/ses-relay')),
        'SPOOL_DIR in the volume',
      );
    });

    const ses = await startFakeSes();
    const volume = `ses-relay-test-spool-${TAG}`;
    t.after(async () => {
      for (const name of containers) await run('podman', ['rm', '--force', '--time', '0', name]);
      containers.clear();
      await run('podman', ['volume', 'rm', '--force', volume]);
      volumes.delete(volume);
      await ses.close();
    });
    volumes.add(volume);
    assert.equal((await run('podman', ['volume', 'create', volume])).code, 0);

    const first = `ses-relay-test-a-${TAG}`;
    containers.add(first);
    // A long first retry delay: the deferred message is still queued when the container stops.
    const relay = await runRelayContainer(first, volume, ses, { RETRY_SCHEDULE: '8s,8s' });
    const metricsUrl = `http://127.0.0.1:${relay.metricsPort}`;

    await t.test('/healthz, /readyz and the image HEALTHCHECK report healthy', async () => {
      await waitForHttp(`${metricsUrl}/healthz`, first, 45_000);
      const ready = await waitForHttp(`${metricsUrl}/readyz`, first, 15_000);
      assert.equal(ready.status, 200);
      const check = await run('podman', ['healthcheck', 'run', first], 30_000);
      assert.equal(check.code, 0, `HEALTHCHECK failed: ${check.stdout}${check.stderr}`);
    });

    await t.test('relays mail through the container to SES', async () => {
      await sendMail(relay.smtpPort, ['one@example.com', 'two@example.com'], 'container 1');
      await sendMail(relay.smtpPort, ['three@example.com'], 'container 2');
      await ses.waitFor(2, 30_000);
      const recipients = ses.messages.flatMap((m) => m.recipients).sort();
      assert.deepEqual(recipients, ['one@example.com', 'three@example.com', 'two@example.com']);
      assert.ok(ses.messages.every((m) => m.mailFrom === 'app@example.com'));
    });

    await t.test('/metrics counts what went through', async () => {
      // SES's 250 reaches the fake before the relay has settled the delivery: poll briefly.
      let text = '';
      for (let i = 0; i < 50; i++) {
        text = await (await fetch(`${metricsUrl}/metrics`)).text();
        if (metricValue(text, 'ses_relay_recipients_delivered_total') >= 3) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(metricValue(text, 'ses_relay_messages_received_total') >= 2, 'messages received');
      assert.ok(metricValue(text, 'ses_relay_recipients_delivered_total') >= 3, 'recipients delivered');
      assert.ok(metricValue(text, 'ses_relay_process_resident_memory_bytes') > 0, 'default process metrics');
    });

    await t.test('the tools in the image: ses-relay queue and ses-relay blocklist, without tsx', async () => {
      const summary = await run('podman', ['exec', first, 'ses-relay', 'queue', 'summary']);
      assert.equal(summary.code, 0, `ses-relay queue summary: ${summary.stdout}${summary.stderr}`);
      assert.match(summary.stdout, /^queued: +\d+ messages/m);
      assert.match(summary.stdout, /^recipients: /m);
      const noTsx = await run('podman', ['exec', first, 'node', '-e', "require.resolve('tsx')"]);
      assert.notEqual(noTsx.code, 0, 'dev dependencies are not in the image');

      const db = await startDynalite();
      try {
        await db.createTable('container-suppression');
        const env = Object.entries({ ...db.env, DYNAMODB_TABLE: 'container-suppression' }).flatMap(
          ([k, v]) => ['--env', `${k}=${v}`],
        );
        const add = await run('podman', [
          'exec',
          ...env,
          first,
          'ses-relay',
          'blocklist',
          'add',
          'Blocked@Example.com',
          '--reason',
          'container test',
        ]);
        assert.equal(add.code, 0, `ses-relay blocklist add: ${add.stdout}${add.stderr}`);
        const check = await run('podman', [
          'exec',
          ...env,
          first,
          'ses-relay',
          'blocklist',
          'check',
          'blocked@example.com',
        ]);
        assert.equal(check.code, 0, check.stderr);
        assert.match(check.stdout, /blocked@example\.com: suppressed/);
      } finally {
        await db.close();
      }
    });

    await t.test('SIGTERM: clean exit 0, deferred mail stays in the volume', async () => {
      // SES defers the next message once (451): it stays queued for the retry 8 s later.
      ses.queueData(FAKE_REPLIES.temporaryFailure);
      await sendMail(relay.smtpPort, ['later@example.com'], 'container deferred');
      let deferred = 0;
      const deadline = Date.now() + 15_000;
      while (deferred < 1 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 200));
        const text = await (await fetch(`${metricsUrl}/metrics`)).text();
        deferred = metricValue(text, 'ses_relay_messages_deferred_total');
      }
      assert.equal(deferred, 1, 'SES deferred the message once');
      assert.equal(ses.messages.length, 2, 'the deferred message was not delivered yet');

      const stop = await stopContainer(first);
      assert.equal(stop.exitCode, 0, `exit code after SIGTERM (137 = killed):\n${tail(stop.logs)}`);
      assert.ok(stop.ms < 29_000, `stopped within the grace period (${stop.ms} ms)`);
      assert.match(stop.logs, /"event":"relay:stopped"/);

      const files = listFiles(await volumeMount(volume));
      assert.ok(
        files.some((f) => f.startsWith('queue/')),
        `spool files in the volume (found: ${files.join(', ') || 'none'})`,
      );
    });

    await t.test('a new container on the same volume delivers the queued message', async () => {
      const second = `ses-relay-test-b-${TAG}`;
      containers.add(second);
      const again = await runRelayContainer(second, volume, ses, { RETRY_SCHEDULE: '1s' });
      await waitForHttp(`http://127.0.0.1:${again.metricsPort}/healthz`, second, 45_000);
      await ses.waitFor(3, 40_000);
      assert.deepEqual(ses.messages[2].recipients, ['later@example.com']);
      assert.match(ses.messages[2].body.toString(), /Subject: container deferred/);
      const stop = await stopContainer(second);
      assert.equal(stop.exitCode, 0, `exit code after SIGTERM:\n${tail(stop.logs)}`);
    });

    await t.test('embedded mode on a read-only root file system: .eml files in the volume', async () => {
      const third = `ses-relay-test-c-${TAG}`;
      containers.add(third);
      // --read-only: the relay writes only to its volume (and /tmp, a tmpfs), as docs/operations.md says.
      const embedded = await runRelayContainer(third, volume, undefined, {}, ['--read-only']);
      await waitForHttp(`http://127.0.0.1:${embedded.metricsPort}/healthz`, third, 45_000);
      await sendMail(embedded.smtpPort, ['local@example.com'], 'container embedded');
      const outbox = path.join(await volumeMount(volume), 'outbox');
      let eml: string[] = [];
      for (let i = 0; i < 100 && eml.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 100));
        eml = fs.existsSync(outbox) ? listFiles(outbox).filter((f) => f.endsWith('.eml')) : [];
      }
      assert.equal(eml.length, 1, 'one .eml file in the outbox');
      assert.match(fs.readFileSync(path.join(outbox, eml[0]), 'utf8'), /Subject: container embedded/);
      const stop = await stopContainer(third);
      assert.equal(stop.exitCode, 0, `exit code after SIGTERM:\n${tail(stop.logs)}`);
      assert.match(stop.logs, /"event":"relay:embedded-mode"/);
    });
  },
);
