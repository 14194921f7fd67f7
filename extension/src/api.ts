/**
 * The REST routes of the kernel-magics server extension (kernel_magics/lab/handlers.py) and
 * the JSON they answer. The panel holds no lifecycle logic: it calls these and renders.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One registered version (kernel_magics.api.VersionRow). */
export interface IVersionRow {
  version: number;
  created: number; // seconds since the epoch
  run_id: string | null;
  task: string | null;
  format: string | null;
  metrics: { [name: string]: number };
  aliases: string[];
  live: boolean;
  tags: { [name: string]: string };
  /** The metrics worth a column (the same choice as the %models table), in order. */
  key_metrics: { [name: string]: number };
}

/** One registered model (kernel_magics.api.ModelSummary). */
export interface IModelSummary {
  name: string;
  live_version: number | null;
  served_version: number | null;
  versions: IVersionRow[];
  /** The last few deployment events, oldest first (the lab route's RECENT_EVENTS). */
  history: IHistoryEvent[];
}

/** One deploy / rollback / undeploy (kernel_magics.records.HistoryEvent). */
export interface IHistoryEvent {
  time: string; // ISO 8601, UTC
  action: string;
  from_version: number | null;
  to_version: number | null;
  // a canary the inference process promoted or rolled back by itself: why, in one line
  reason?: string | null;
  evidence?: { [key: string]: unknown } | null;
}

/** A served version's counters since the process started (kernel_magics.records.VersionStats):
 * the fields the panel reads. */
export interface IVersionStats {
  /** a language model's completion tokens */
  tokens?: number;
  ttft_p50_ms?: number | null;
  ttft_p99_ms?: number | null;
  inter_token_p99_ms?: number | null;
}

/** A language model's engine now (kernel_magics.records.GenerationState). */
export interface IGenerationState {
  running: number;
  queued: number;
  max_running: number;
  kv_cache_tokens: number;
  kv_cache_reserved: number;
  kv_cache_use: number | null;
}

/** One served model (kernel_magics.records.ModelState): the fields the panel reads. */
export interface IServedModel {
  version: number;
  state: string;
  stats?: IVersionStats | null;
  /** null for every model that is not a language model */
  generation?: IGenerationState | null;
}

/** The serving target's snapshot (kernel_magics.records.ServerStatus). */
export interface IServerStatus {
  url: string | null;
  pid: number | null;
  status: string;
  target: string;
  port: number | null;
  workers: number[];
  started_at: string | null;
  models: { [name: string]: IServedModel };
  /** when the snapshot was taken (seconds since the epoch) */
  snapshot_at?: number | null;
  /** per served model, %monitor's quality line per version (the latest drift check, live
   * metrics from feedback), written by the server route; absent from older servers */
  quality?: { [name: string]: string[] };
}

/** The answer to a deploy, rollback or undeploy (kernel_magics.records.TransitionResult). */
export interface ITransitionResult {
  name: string;
  action: string;
  version: number | null;
  previous_version: number | null;
  load_ms: number | null;
  reused: boolean;
  /** the version was already live as asked: nothing changed, nothing was recorded */
  unchanged?: boolean;
}

export type Action = 'deploy' | 'rollback' | 'undeploy';

/** Calls the server extension; a failure becomes an Error whose message is one line. */
export class ModelsClient {
  constructor(private readonly settings: ServerConnection.ISettings) {}

  async models(): Promise<IModelSummary[]> {
    const body = await this.request<{ models: IModelSummary[] }>('models');
    return body.models;
  }

  async status(): Promise<IServerStatus | null> {
    const body = await this.request<{ status: IServerStatus | null }>('status');
    return body.status;
  }

  async history(name: string): Promise<IHistoryEvent[]> {
    const body = await this.request<{ history: IHistoryEvent[] }>(
      `history/${encodeURIComponent(name)}`
    );
    return body.history;
  }

  /** ``deploy`` takes ``{version}`` (newest when absent), ``rollback`` takes ``{to}``. */
  async transition(
    name: string,
    action: Action,
    body: { version?: number; to?: number } = {}
  ): Promise<ITransitionResult> {
    return this.request<ITransitionResult>(
      `models/${encodeURIComponent(name)}/${action}`,
      { method: 'POST', body: JSON.stringify(body) }
    );
  }

  private async request<T>(path: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, 'kernel-magics', path);
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (error) {
      throw new Error(`cannot reach the Jupyter server: ${String(error)}`);
    }
    const text = await response.text();
    let data: any = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      // not JSON (a proxy's error page): the status line says enough
    }
    if (!response.ok) {
      const reason =
        data && typeof data.error === 'string'
          ? data.error
          : response.statusText;
      throw new Error(`${response.status}: ${reason}`.split('\n')[0]);
    }
    return data as T;
  }
}
