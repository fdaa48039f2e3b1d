/**
 * Operations assets stay true to the code: the Drone pipeline has its steps and triggers, the Prometheus
 * alert rules and every dashboard query pass promtool, every ses_relay_* metric the dashboard and the
 * rules name is one a real running relay exports (so a renamed metric breaks this test, not a dashboard
 * in production), and the compose stack, Kubernetes example, env example and Dockerfile only use
 * variables the relay reads.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import YAML from 'yaml';
import { CONFIG_VARIABLES } from '../src/config/specs';
import { startFakeSes, type FakeSes } from './helpers/fake-ses';
import { startDynalite, TEST_CREDENTIALS, TEST_REGION, type Dynalite } from './helpers/dynalite';
import { REDIS_SERVER, startRedisServer, type RedisServer } from './helpers/redis-server';
import {
  fakeSesEnv,
  ROOT,
  startRelayProcess,
  stopRelayProcess,
  type RelayProcess,
} from './helpers/relay-process';

const read = (file: string) => fs.readFileSync(path.join(ROOT, file), 'utf8');
type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v && typeof v === 'object' ? (v as Obj) : {});
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : v === undefined ? [] : [v]);

/** Variables the relay does not read itself but its runtime does (AWS SDK, Node). */
const RUNTIME_VARIABLES = [
  'AWS_REGION',
  'AWS_DEFAULT_REGION',
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_PROFILE',
  'AWS_ENDPOINT_URL_DYNAMODB',
  'NODE_EXTRA_CA_CERTS',
  'NODE_OPTIONS',
  'NODE_ENV',
  'TZ',
];
const KNOWN_VARIABLES = new Set([...CONFIG_VARIABLES, ...RUNTIME_VARIABLES]);

function assertKnownVariables(names: string[], where: string): void {
  const unknown = names.filter((n) => !KNOWN_VARIABLES.has(n));
  assert.deepEqual(unknown, [], `${where} sets variables the relay does not read`);
}

function hasCommand(cmd: string): boolean {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
}

function skipLoudly(t: TestContext, reason: string): void {
  console.error(`\n*** SKIPPED ${t.name}: ${reason} ***\n`);
  t.skip(reason);
}

function promtool(args: string[]): { code: number | null; output: string } {
  const r = spawnSync('promtool', args, { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

/** Metric names a text mentions (ses_relay_ prefix). */
function metricNamesIn(text: string): string[] {
  return [...new Set(text.match(/\bses_relay_[a-zA-Z0-9_]+/g) ?? [])].sort();
}

interface DashboardPanel {
  title?: string;
  gridPos?: { x: number; y: number; w: number; h: number };
  type?: string;
  targets?: Array<{ expr?: string }>;
  panels?: DashboardPanel[];
}

function dashboardExprs(dashboard: { panels?: DashboardPanel[] }): Array<{ panel: string; expr: string }> {
  const out: Array<{ panel: string; expr: string }> = [];
  const walk = (panels: DashboardPanel[] = []) => {
    for (const p of panels) {
      for (const target of p.targets ?? []) {
        if (target.expr) out.push({ panel: p.title ?? '?', expr: target.expr });
      }
      walk(p.panels);
    }
  };
  walk(dashboard.panels);
  return out;
}

describe('Drone pipeline (.drone.yml)', () => {
  const docs = YAML.parseAllDocuments(read('.drone.yml')).map((d) => d.toJS() as Obj);
  const pipeline = docs.find((d) => d.kind === 'pipeline');
  const steps = list(pipeline?.steps).map(obj);
  const step = (name: string) => {
    const s = steps.find((x) => x.name === name);
    assert.ok(s, `step ${name}`);
    return s;
  };
  const commands = (s: Obj) => list(s.commands).map(String).join('\n');
  const when = (s: Obj) => obj(s.when);

  test('is a docker pipeline triggered by pushes, pull requests and tags', () => {
    assert.ok(pipeline, 'a pipeline document');
    assert.equal(pipeline.type, 'docker');
    const events = list(obj(pipeline.trigger).event);
    for (const e of ['push', 'pull_request', 'tag']) assert.ok(events.includes(e), `trigger on ${e}`);
  });

  test('installs, lints, checks formatting, typechecks, tests and builds the Lambda', () => {
    const all = steps.map(commands).join('\n');
    for (const cmd of [
      'npm ci',
      'npm run lint',
      'npm run format:check',
      'npm run typecheck',
      'npm test',
      'npm run build:lambda',
    ]) {
      assert.ok(all.includes(cmd), `a step runs ${cmd}`);
    }
    // The npm scripts the pipeline calls exist.
    const scripts = obj((JSON.parse(read('package.json')) as Obj).scripts);
    for (const [, script] of all.matchAll(/npm run ([\w:-]+)/g)) {
      assert.ok(script in scripts, `package.json defines the script "${script}" that .drone.yml runs`);
    }
    assert.ok('test' in scripts);
  });

  test('publishes :latest from main with plugins/docker', () => {
    const s = step('publish-latest');
    assert.match(String(s.image), /^plugins\/docker(:|$)/);
    const settings = obj(s.settings);
    assert.deepEqual(list(settings.tags), ['latest']);
    assert.deepEqual(list(when(s).branch), ['main']);
    assert.deepEqual(list(when(s).event), ['push']);
    assert.ok(obj(settings.password).from_secret, 'registry password from a Drone secret');
    assert.ok(obj(settings.username).from_secret, 'registry user from a Drone secret');
  });

  test('publishes :x.y.z, :x.y and :x on semver tags (auto_tag)', () => {
    const s = step('publish-release');
    assert.match(String(s.image), /^plugins\/docker(:|$)/);
    const settings = obj(s.settings);
    assert.equal(settings.auto_tag, true, 'auto_tag expands v1.2.3 into 1.2.3, 1.2 and 1');
    assert.deepEqual(list(when(s).event), ['tag']);
    assert.ok(
      list(settings.build_args).some((a) => String(a).startsWith('VERSION=')),
      'VERSION label',
    );
    assert.ok(
      list(settings.build_args).some((a) => String(a).startsWith('REVISION=')),
      'REVISION label',
    );
  });

  test('deploys the Lambda bundle from main with secrets', () => {
    const s = step('deploy-lambda');
    assert.match(commands(s), /aws lambda update-function-code[\s\S]*fileb:\/\/lambda\/dist\/lambda\.zip/);
    assert.deepEqual(list(when(s).branch), ['main']);
    assert.deepEqual(list(when(s).event), ['push']);
    const env = obj(s.environment);
    for (const key of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) {
      assert.ok(obj(env[key]).from_secret, `${key} from a Drone secret`);
    }
    assert.ok(list(s.depends_on).includes('build-lambda'), 'deploys the bundle built in this run');
  });

  test('publishing and deploying wait for every check', () => {
    for (const name of ['publish-latest', 'publish-release', 'deploy-lambda']) {
      const deps = list(step(name).depends_on);
      for (const dep of ['lint', 'typecheck', 'test', 'build-lambda']) {
        assert.ok(deps.includes(dep), `${name} depends on ${dep}`);
      }
    }
  });
});

describe('Prometheus rules and Grafana dashboard', () => {
  const alertsFile = path.join(ROOT, 'docker', 'prometheus', 'alerts.yml');
  const dashboardText = read('docker/grafana/dashboards/ses-relay.json');

  test('alert rules pass promtool check rules', (t) => {
    if (!hasCommand('promtool')) return skipLoudly(t, 'promtool not installed (apt-get install prometheus)');
    const r = promtool(['check', 'rules', alertsFile]);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, /SUCCESS/);
  });

  test('alert rules fire when they should and not before (promtool test rules)', (t) => {
    if (!hasCommand('promtool')) return skipLoudly(t, 'promtool not installed (apt-get install prometheus)');
    const r = promtool(['test', 'rules', path.join(ROOT, 'docker', 'prometheus', 'alerts.test.yml')]);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, /SUCCESS/);
  });

  test('deferral reasons in queries are ones the relay uses (DeferralReason)', () => {
    const types = read('src/types.ts');
    const union = /export type DeferralReason =([^;]*);/.exec(types)?.[1] ?? '';
    const reasons = new Set([...union.matchAll(/'([a-z-]+)'/g)].map((m) => m[1]));
    assert.ok(reasons.size >= 3, 'DeferralReason parsed from src/types.ts');
    for (const file of [
      'docker/prometheus/alerts.yml',
      'docker/prometheus/alerts.test.yml',
      'docker/grafana/dashboards/ses-relay.json',
      'docs/operations.md',
    ]) {
      const text = read(file).replaceAll('\\"', '"');
      const used = [...text.matchAll(/reason=~?"([^"]+)"/g)].flatMap((m) => m[1].split('|'));
      const unknown = used.filter((r) => !reasons.has(r));
      assert.deepEqual(unknown, [], `${file} filters on reasons the relay never uses`);
    }
  });

  test('the alert rules cover the failure modes operators need', () => {
    const rules = YAML.parse(read('docker/prometheus/alerts.yml')) as {
      groups: Array<{ rules: Array<{ alert?: string; expr: string }> }>;
    };
    const exprs = rules.groups.flatMap((g) => g.rules).map((r) => `${r.alert}: ${r.expr}`);
    const covers = (pattern: RegExp, what: string) =>
      assert.ok(
        exprs.some((e) => pattern.test(e)),
        `an alert on ${what}`,
      );
    covers(/up\{job="ses-relay"\} == 0/, 'the relay being down');
    covers(/ses_relay_queue_(messages|recipients)/, 'a growing queue');
    covers(/ses_relay_queue_oldest_age_seconds/, 'old queued mail');
    covers(/ses_relay_recipients_failed_total/, 'the failure ratio');
    covers(/throttled-by-ses|ses_relay_limiter_effective_rate/, 'sustained SES throttling');
    covers(/ses_relay_suppression_errors_total/, 'suppression-list errors');
  });

  test('the dashboard is valid JSON with the panels an operator needs', () => {
    const dashboard = JSON.parse(dashboardText) as {
      uid?: string;
      title?: string;
      panels?: DashboardPanel[];
    };
    assert.equal(dashboard.uid, 'ses-relay');
    const exprs = dashboardExprs(dashboard);
    assert.ok(exprs.length >= 20, 'queries');
    // Panels do not overlap on the 24-column grid.
    const boxes = (dashboard.panels ?? []).map((p) => ({ title: p.title, ...p.gridPos! }));
    for (const [i, a] of boxes.entries()) {
      assert.ok(a.x >= 0 && a.x + a.w <= 24, `${a.title} fits the grid`);
      for (const b of boxes.slice(i + 1)) {
        const overlap = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
        assert.ok(!overlap, `panels "${a.title}" and "${b.title}" overlap`);
      }
    }
    const all = exprs.map((e) => e.expr).join('\n');
    for (const needed of [
      'ses_relay_recipients_received_total',
      'ses_relay_recipients_delivered_total',
      'ses_relay_limiter_rate',
      'ses_relay_queue_messages',
      'ses_relay_queue_oldest_age_seconds',
      'ses_relay_recipients_deferred_total',
      'ses_relay_limiter_effective_rate',
      'ses_relay_suppression_blocked_total',
      'ses_relay_upstream_latency_seconds_bucket',
    ]) {
      assert.ok(all.includes(needed), `a panel uses ${needed}`);
    }
  });

  test('every dashboard query is valid PromQL (promtool)', (t) => {
    if (!hasCommand('promtool')) return skipLoudly(t, 'promtool not installed (apt-get install prometheus)');
    const exprs = dashboardExprs(JSON.parse(dashboardText) as { panels?: DashboardPanel[] });
    const rules = {
      groups: [
        {
          name: 'dashboard',
          rules: exprs.map((e, i) => ({
            record: `dashboard:query_${i}`,
            expr: e.expr.replaceAll('$instance', '.*').replaceAll('$__rate_interval', '1m'),
          })),
        },
      ],
    };
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dashboard-promql-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'dashboard-rules.yml');
    fs.writeFileSync(file, YAML.stringify(rules));
    const r = promtool(['check', 'rules', file]);
    assert.equal(r.code, 0, r.output);
  });

  test('the Prometheus config of the compose stack passes promtool check config', (t) => {
    if (!hasCommand('promtool')) return skipLoudly(t, 'promtool not installed (apt-get install prometheus)');
    const config = YAML.parse(read('docker/prometheus/prometheus.yml')) as Obj;
    assert.deepEqual(config.rule_files, ['/etc/prometheus/alerts.yml'], 'compose mounts alerts.yml there');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prometheus-config-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'prometheus.yml');
    fs.writeFileSync(file, YAML.stringify({ ...config, rule_files: [alertsFile] }));
    const r = promtool(['check', 'config', file]);
    assert.equal(r.code, 0, r.output);
  });
});

describe('metrics named by the dashboard and the alerts exist in a running relay', () => {
  let ses: FakeSes;
  let dynalite: Dynalite;
  let relay: RelayProcess | undefined;
  let redis: RedisServer | undefined;
  let exported: Map<string, string>;

  before(async () => {
    ses = await startFakeSes();
    dynalite = await startDynalite();
    await dynalite.createTable('ses-suppression');
    const env: Record<string, string> = {
      ...fakeSesEnv(ses.port),
      ...dynalite.env,
      USE_BLOCKLIST: 'true',
      DYNAMODB_TABLE: 'ses-suppression',
      AWS_REGION: TEST_REGION,
      AWS_ACCESS_KEY_ID: TEST_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: TEST_CREDENTIALS.secretAccessKey,
    };
    // With Redis the shared limiter (and its metrics) is in use too; without it those metrics are reported
    // missing (CI installs redis-server).
    if (REDIS_SERVER) {
      redis = await startRedisServer();
      env.REDIS_URL = redis.url;
    }
    relay = await startRelayProcess({ env, timeoutMs: 20_000 });
    // One message so that counters with labels have samples too.
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: relay.smtpPort,
      ignoreTLS: true,
    });
    await transport.sendMail({
      from: 'app@example.com',
      to: 'someone@example.com',
      subject: 'hi',
      text: 'hi',
    });
    transport.close();
    await ses.waitFor(1, 20_000);
    exported = new Map();
    for (const [, name, type] of (await relay.metrics()).matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
      exported.set(name, type);
      if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) exported.set(name + s, type);
      if (type === 'summary') for (const s of ['_sum', '_count']) exported.set(name + s, type);
    }
  });

  after(async () => {
    if (relay) await stopRelayProcess(relay);
    await redis?.close();
    await ses?.close();
    await dynalite?.close();
  });

  const check = (file: string) => {
    const referenced = metricNamesIn(read(file));
    assert.ok(referenced.length > 0, `${file} names metrics`);
    const missing = referenced.filter((name) => !exported.has(name));
    assert.deepEqual(missing, [], `${file} names metrics the relay does not export`);
  };

  test('docker/grafana/dashboards/ses-relay.json', () => check('docker/grafana/dashboards/ses-relay.json'));
  test('docker/prometheus/alerts.yml', () => check('docker/prometheus/alerts.yml'));
  test('docker/prometheus/alerts.test.yml', () => check('docker/prometheus/alerts.test.yml'));
  test('docs/operations.md', () => check('docs/operations.md'));
});

describe('docs/operations.md', () => {
  const docs = read('docs/operations.md');

  test('every log event it names is one the relay logs', () => {
    const source = listSources(path.join(ROOT, 'src'))
      .map((f) => fs.readFileSync(f, 'utf8'))
      .join('\n');
    const section = docs.slice(docs.indexOf('### The log lines'), docs.indexOf('### The metrics to look at'));
    const events = [...new Set([...section.matchAll(/`([a-z]+:[a-z-]+)`/g)].map((m) => m[1]))];
    assert.ok(events.length >= 8, 'the log lines table');
    const missing = events.filter((e) => !source.includes(`'${e}'`));
    assert.deepEqual(missing, [], 'log events named in docs/operations.md but never logged');
  });

  test('every VAR=value it shows is a variable the relay reads', () => {
    const names = [...docs.matchAll(/\b([A-Z][A-Z0-9_]{2,})=/g)].map((m) => m[1]);
    assert.ok(names.length > 3);
    assertKnownVariables(
      names.filter((n) => !['VERSION', 'REVISION', 'SOURCE', 'NODE_IMAGE'].includes(n)),
      'docs/operations.md',
    );
  });

  test('links to the Kubernetes example, the compose stack and the assets', () => {
    for (const link of [
      'k8s/ses-relay.yaml',
      '../docker/relay.env.example',
      '../docker/prometheus/alerts.yml',
      '../docker/grafana/dashboards/ses-relay.json',
      '../.drone.yml',
    ]) {
      assert.ok(docs.includes(`(${link})`), `links ${link}`);
      assert.ok(fs.existsSync(path.join(ROOT, 'docs', link)), `${link} exists`);
    }
  });
});

function listSources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? listSources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

describe('compose stack, Kubernetes example, image', () => {
  test('docker/compose.yaml names the whole local stack', () => {
    const compose = YAML.parse(read('docker/compose.yaml')) as { services: Record<string, Obj> };
    const services = Object.keys(compose.services);
    for (const name of ['relay', 'redis', 'mailpit', 'prometheus', 'grafana']) {
      assert.ok(services.includes(name), `service ${name}`);
    }
    assert.ok(
      services.some((s) => /dynamo|dynalite/.test(s)),
      'a local DynamoDB service',
    );
    const relay = compose.services.relay;
    assert.equal(obj(relay.build).context, '..');
    assert.equal(obj(relay.build).dockerfile, 'Dockerfile');
    assert.ok(
      list(relay.volumes).some((v) => String(v).endsWith(':/var/spool/ses-relay')),
      'spool volume',
    );
    assertKnownVariables(Object.keys(obj(relay.environment)), 'the relay service');
    // Files the stack mounts exist.
    for (const svc of Object.values(compose.services)) {
      for (const v of list(svc.volumes)) {
        const src = String(v).split(':')[0];
        if (src.startsWith('.')) assert.ok(fs.existsSync(path.join(ROOT, 'docker', src)), `${src} exists`);
      }
    }
    const env = obj(relay.environment);
    assert.equal(env.AWS_SMTP_HOST, 'mailpit', 'Mailpit stands in for SES');
    // Host names the relay is given are services of the stack, and every dependency exists.
    assert.ok(services.includes(new URL(String(env.REDIS_URL)).hostname), 'REDIS_URL names a service');
    assert.ok(services.includes(new URL(String(env.AWS_ENDPOINT_URL_DYNAMODB)).hostname), 'DynamoDB service');
    for (const [name, svc] of Object.entries(compose.services)) {
      for (const dep of Object.keys(obj(svc.depends_on))) {
        assert.ok(services.includes(dep), `${name} depends on an existing service ${dep}`);
      }
    }
  });

  test('docker/relay.env.example only sets variables the relay reads', () => {
    const names = [...read('docker/relay.env.example').matchAll(/^#?\s?([A-Z][A-Z0-9_]+)=/gm)].map(
      (m) => m[1],
    );
    assert.ok(names.length > 5);
    assertKnownVariables(names, 'docker/relay.env.example');
  });

  test('docs/k8s/ses-relay.yaml: StatefulSet with a spool volume, probes and a drain-long grace', () => {
    const docs = YAML.parseAllDocuments(read('docs/k8s/ses-relay.yaml')).map((d) => d.toJS() as Obj);
    const byKind = (kind: string) => docs.filter((d) => d.kind === kind);
    const [sts] = byKind('StatefulSet');
    assert.ok(sts, 'a StatefulSet');
    assert.ok(byKind('Service').length >= 1, 'a Service');
    const spec = obj(sts.spec);
    const claims = list(spec.volumeClaimTemplates).map(obj);
    assert.ok(claims.length === 1, 'one PersistentVolumeClaim per replica');
    const pod = obj(obj(spec.template).spec);
    const [container] = list(pod.containers).map(obj);
    const mounts = list(container.volumeMounts).map(obj);
    const spool = mounts.find((m) => m.mountPath === '/var/spool/ses-relay');
    assert.equal(spool?.name, obj(claims[0].metadata).name, 'the claim is mounted at the spool');
    assert.equal(obj(obj(container.livenessProbe).httpGet).path, '/healthz');
    assert.equal(obj(obj(container.readinessProbe).httpGet).path, '/readyz');
    const configMap = obj(byKind('ConfigMap')[0]?.data);
    const secret = obj(byKind('Secret')[0]?.stringData);
    assertKnownVariables([...Object.keys(configMap), ...Object.keys(secret)], 'the Kubernetes example');
    const shutdownSeconds = parseInt(String(configMap.SHUTDOWN_TIMEOUT ?? '25s'), 10);
    assert.ok(
      Number(pod.terminationGracePeriodSeconds) >= shutdownSeconds + 5,
      'terminationGracePeriodSeconds leaves time to drain',
    );
  });

  test('Dockerfile: base image argument, non-root, volume, ports, healthcheck, exec-form CMD, labels', () => {
    const dockerfile = read('Dockerfile');
    assert.match(dockerfile, /^ARG NODE_IMAGE=node:\d+-bookworm-slim$/m);
    assert.equal(dockerfile.match(/^FROM \$\{NODE_IMAGE\}/gm)?.length, 2, 'two stages from the same base');
    assert.match(dockerfile, /^USER node$/m);
    assert.match(dockerfile, /^VOLUME \/var\/spool\/ses-relay$/m);
    assert.match(dockerfile, /^EXPOSE 1025 9464 2525$/m);
    assert.match(dockerfile, /^HEALTHCHECK [\s\S]*\/healthz/m);
    assert.match(dockerfile, /^CMD \["node", "dist\/main\.js"\]$/m);
    for (const label of ['version', 'revision', 'source']) {
      assert.match(dockerfile, new RegExp(`org\\.opencontainers\\.image\\.${label}=`));
    }
    const envs = [...dockerfile.matchAll(/^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]+)=\S+(?: \\)?$/gm)].map((m) => m[1]);
    assertKnownVariables(
      envs.filter((n) => !/^(VERSION|REVISION|SOURCE|CREATED|JOBS)$/.test(n)),
      'the Dockerfile',
    );
    const ignore = read('.dockerignore');
    assert.match(ignore, /^\*$/m, '.dockerignore starts from nothing');
    assert.match(ignore, /^!src\/$/m);
  });
});
