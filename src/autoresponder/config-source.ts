/**
 * Where the autoresponder's configuration comes from, and keeping it current.
 *
 * - AUTORESPONDER_CONFIG is a file path or `s3://bucket/key` (the AWS SDK's standard chain: AWS_REGION,
 *   credentials, and AWS_ENDPOINT_URL_S3, which the SDK reads itself, for a local S3).
 * - Every AUTORESPONDER_CONFIG_REFRESH the source is polled: the file by path (so a file replaced by
 *   rename is seen: its inode, size or mtime change), the object by ETag (HeadObject, then GetObject only
 *   when it changed). Every attachment is checked by ETag (HeadObject) too, so a new upload under the same
 *   key is picked up; attachments are fetched into `<dataDir>/attachments` once per ETag and read from
 *   there (a 30 MB attachment never sits in memory).
 * - A configuration is put in force only when it parses, validates and every attachment is on disk; a bad
 *   one is logged and counted once (ses_relay_autoresponder_config_reload_failures_total) and the last good
 *   one stays in force. The first load happens at start: failing it stops the relay with one line.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import type { AutoresponderSource } from '../config';
import type { Logger } from '../observability/logger';
import { autoresponderMetrics } from './autoresponder-metrics';
import { parseResponderConfig, ResponderConfigError, type ResponderConfig } from './config-schema';

export interface CachedAttachment {
  bucket: string;
  key: string;
  etag: string;
  /** The cached file (immutable: its name is derived from bucket, key and ETag). */
  path: string;
  size: number;
}

export interface ActiveConfig {
  config: ResponderConfig;
  /** By `attachmentId(bucket, key)`. */
  attachments: Map<string, CachedAttachment>;
  /** File: `inode:size:mtime`; S3: the ETag. */
  version: string;
  loadedAt: number;
}

export interface ConfigSourceOptions {
  source: AutoresponderSource;
  refreshMs: number;
  /** `<dataDir>/attachments` holds the cache. */
  dataDir: string;
  logger: Logger;
  /** Injected for tests; by default one is created on first use from the SDK's standard chain. */
  s3?: S3Client;
}

export const attachmentId = (bucket: string, key: string): string => `${bucket}/${key}`;

function describeError(err: unknown): string {
  const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  const plain = err instanceof ResponderConfigError || !e.name || e.name === 'Error' || e.name === 'Unknown';
  const name = plain ? '' : `${e.name}: `;
  return `${name}${e.message || (status ? `HTTP ${status}` : String(err))}`;
}

export class ConfigSource {
  private active: ActiveConfig | undefined;
  private previous: ActiveConfig | undefined;
  private timer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> | undefined;
  private lastFailure: string | undefined;
  private s3: S3Client | undefined;
  private readonly ownS3: boolean;
  private readonly cacheDir: string;
  private readonly log: Logger;

  constructor(private readonly options: ConfigSourceOptions) {
    this.s3 = options.s3;
    this.ownS3 = !options.s3;
    this.cacheDir = path.join(options.dataDir, 'attachments');
    this.log = options.logger.child({ component: 'autoresponder' });
  }

  /** First load (throws with one line when it fails), then polling. */
  async start(): Promise<void> {
    await fsp.mkdir(this.cacheDir, { recursive: true });
    try {
      const loaded = await this.load(undefined);
      this.swap(loaded);
    } catch (err) {
      throw new ResponderConfigError(`AUTORESPONDER_CONFIG: ${this.where()}: ${describeError(err)}`);
    }
    await this.pruneCache();
    this.timer = setInterval(() => void this.refresh(), this.options.refreshMs);
    this.timer.unref();
  }

  /** The configuration in force. */
  current(): ActiveConfig {
    if (!this.active) throw new Error('autoresponder configuration not loaded yet');
    return this.active;
  }

  /** One poll (also run by the timer); never throws. */
  refresh(): Promise<void> {
    this.refreshing ??= this.poll().finally(() => {
      this.refreshing = undefined;
    });
    return this.refreshing;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.refreshing;
    if (this.ownS3) this.s3?.destroy();
  }

  private where(): string {
    const s = this.options.source;
    return s.kind === 'file' ? s.path : `s3://${s.bucket}/${s.key}`;
  }

  private async poll(): Promise<void> {
    const current = this.active;
    try {
      const loaded = await this.load(current);
      this.lastFailure = undefined;
      if (loaded !== current) {
        this.swap(loaded);
        await this.pruneCache();
      }
    } catch (err) {
      const problem = describeError(err);
      if (problem === this.lastFailure) return; // the same bad configuration: logged and counted once
      this.lastFailure = problem;
      autoresponderMetrics.configReloadFailures.inc();
      this.log.error(
        { event: 'autoresponder:config-rejected', source: this.where(), problem, version: current?.version },
        `autoresponder configuration not reloaded, the last good one stays in force: ${problem}`,
      );
    }
  }

  private swap(loaded: ActiveConfig): void {
    this.previous = this.active;
    this.active = loaded;
    autoresponderMetrics.configReloads.inc();
    autoresponderMetrics.configEntries.set(loaded.config.entries.length);
    this.log.info(
      {
        event: 'autoresponder:config-loaded',
        source: this.where(),
        version: loaded.version,
        entries: loaded.config.entries.length,
        addresses: loaded.config.byAddress.size,
        attachments: loaded.attachments.size,
      },
      'autoresponder configuration in force',
    );
  }

  /** The configuration to be in force now: `current` itself when nothing changed. */
  private async load(current: ActiveConfig | undefined): Promise<ActiveConfig> {
    const read = await this.readIfChanged(current?.version);
    const config = read ? parseResponderConfig(read.text) : current!.config;
    const attachments = new Map<string, CachedAttachment>();
    let changed = !!read;
    for (const entry of config.entries) {
      for (const a of entry.attachments) {
        const id = attachmentId(a.bucket, a.key);
        if (attachments.has(id)) continue;
        try {
          const cached = await this.fetchAttachment(a.bucket, a.key, current?.attachments.get(id));
          if (cached !== current?.attachments.get(id)) changed = true;
          attachments.set(id, cached);
        } catch (err) {
          throw new ResponderConfigError(
            `entry ${entry.index} (${entry.address}): attachment s3://${id}: ${describeError(err)}`,
          );
        }
      }
    }
    if (!changed && current) return current;
    return { config, attachments, version: read?.version ?? current!.version, loadedAt: Date.now() };
  }

  private async readIfChanged(
    version: string | undefined,
  ): Promise<{ text: string; version: string } | undefined> {
    const s = this.options.source;
    if (s.kind === 'file') {
      // One open file for stat and read, so a rename in between cannot pair one version with another text.
      const handle = await fsp.open(s.path, 'r');
      try {
        const st = await handle.stat();
        const v = `${st.ino}:${st.size}:${st.mtimeMs}`;
        if (v === version) return undefined;
        return { text: await handle.readFile('utf8'), version: v };
      } finally {
        await handle.close();
      }
    }
    const client = this.client();
    if (version !== undefined) {
      const head = await client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: s.key }));
      if (head.ETag === version) return undefined;
    }
    const got = await client.send(new GetObjectCommand({ Bucket: s.bucket, Key: s.key }));
    const text = (await got.Body?.transformToString('utf-8')) ?? '';
    return { text, version: got.ETag ?? `${Date.now()}` };
  }

  private async fetchAttachment(
    bucket: string,
    key: string,
    cached?: CachedAttachment,
  ): Promise<CachedAttachment> {
    const client = this.client();
    const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    if (cached && head.ETag && head.ETag === cached.etag && fs.existsSync(cached.path)) return cached;
    const got = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const etag = got.ETag ?? head.ETag ?? randomBytes(8).toString('hex');
    const name = createHash('sha256').update(`${bucket}\0${key}\0${etag}`).digest('hex');
    const file = path.join(this.cacheDir, name);
    if (!fs.existsSync(file)) {
      const tmp = path.join(this.cacheDir, `.tmp-${name}-${randomBytes(4).toString('hex')}`);
      try {
        await pipeline(got.Body as Readable, fs.createWriteStream(tmp, { flags: 'wx' }));
        await fsp.rename(tmp, file);
      } catch (err) {
        await fsp.rm(tmp, { force: true });
        throw err;
      }
    } else {
      (got.Body as Readable | undefined)?.destroy();
    }
    const { size } = await fsp.stat(file);
    this.log.info(
      { event: 'autoresponder:attachment-fetched', object: `s3://${bucket}/${key}`, etag, size },
      'attachment cached',
    );
    return { bucket, key, etag, path: file, size };
  }

  /** Remove cached files used by neither the configuration in force nor the one before it. */
  private async pruneCache(): Promise<void> {
    const keep = new Set<string>();
    for (const c of [this.active, this.previous])
      for (const a of c?.attachments.values() ?? []) keep.add(a.path);
    const names = await fsp.readdir(this.cacheDir).catch(() => [] as string[]);
    for (const name of names) {
      const file = path.join(this.cacheDir, name);
      if (!keep.has(file)) await fsp.rm(file, { force: true }).catch(() => undefined);
    }
  }

  private client(): S3Client {
    this.s3 ??= new S3Client({
      maxAttempts: 3,
      requestHandler: { connectionTimeout: 5_000, requestTimeout: 120_000 },
    });
    return this.s3;
  }
}
