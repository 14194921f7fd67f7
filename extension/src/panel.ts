/**
 * The Models panel: polls the server extension while it is visible (one request for the
 * models, their recent history included, one for the status) and renders what it answers. Deploy / Rollback / Undeploy call the same REST routes; the outcome of each call
 * (or its error) is one line at the top.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { Message } from '@lumino/messaging';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import {
  Action,
  IHistoryEvent,
  IModelSummary,
  IServerStatus,
  ITransitionResult,
  ModelsClient
} from './api';
import {
  generationLine,
  h,
  healthLine,
  modelCard,
  qualityLine
} from './render';

/** How often a visible panel refreshes. */
export const REFRESH_MS = 5000;
/** The longest wait between refreshes while the server keeps failing (the poll backs off). */
export const MAX_BACKOFF_MS = 60000;

interface ISnapshot {
  models: IModelSummary[];
  status: IServerStatus | null;
}

export class ModelsPanel extends Widget {
  constructor(
    settings: ServerConnection.ISettings,
    refreshMs: number = REFRESH_MS
  ) {
    super();
    this.client = new ModelsClient(settings);
    // Stands by while the panel or the browser tab is hidden; a failed refresh rejects, so
    // the poll waits longer after each failure (up to MAX_BACKOFF_MS) instead of every 5 s.
    this.poll = new Poll({
      auto: false,
      factory: async () => {
        if (!(await this.refresh())) {
          throw new Error('refresh failed');
        }
      },
      frequency: { interval: refreshMs, backoff: true, max: MAX_BACKOFF_MS },
      standby: () => !this.isVisible || document.hidden,
      name: 'kernel-magics:models'
    });
    this.addClass('jp-KmModels');

    const refresh = h(
      'button',
      {
        class: 'jp-KmModels-button jp-KmModels-refresh',
        type: 'button',
        title: 'Refresh now'
      },
      'Refresh'
    );
    refresh.addEventListener('click', () => void this.refresh());
    this.node.append(
      h('div', { class: 'jp-KmModels-title' }, h('h2', {}, 'Models'), refresh),
      this.healthNode,
      this.errorNode,
      this.noticeNode,
      this.listNode
    );
    this.errorNode.className = 'jp-KmModels-error';
    this.noticeNode.className = 'jp-KmModels-notice';
    this.listNode.className = 'jp-KmModels-list';
    this.showError('');
  }

  /** Fetch the models (with their recent history) and the status; re-render only what
   * changed. Resolves false when the server could not answer (the error line says why). */
  refresh(): Promise<boolean> {
    // One refresh at a time: a slow store must not pile up requests every 5 s.
    if (this.pending === null) {
      this.pending = this.load().finally(() => {
        this.pending = null;
      });
    }
    return this.pending;
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.poll.start(); // its first tick refreshes at once
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    void this.poll.stop();
  }

  private async load(): Promise<boolean> {
    const generation = this.generation;
    try {
      const [models, status] = await Promise.all([
        this.client.models(),
        this.client.status()
      ]);
      if (generation !== this.generation) {
        return true; // read before an action changed what is live: the action's answer is newer
      }
      this.tokenRates = tokensPerSecond(this.snapshot?.status ?? null, status);
      this.snapshot = { models, status };
      this.showError(this.actionError); // a refresh does not hide what an action answered
      this.render();
      return true;
    } catch (error) {
      // keep showing the last good snapshot under the error line
      this.showError(String((error as Error).message ?? error));
      return false;
    }
  }

  private render(force = false): void {
    const snapshot = this.snapshot;
    if (snapshot === null) {
      return;
    }
    // Rebuilding the DOM every 5 s would close an open version picker: skip when nothing changed.
    const key = JSON.stringify([
      snapshot,
      this.tokenRates,
      this.busyModel,
      [...this.selected]
    ]);
    if (!force && key === this.renderedKey) {
      return;
    }
    this.renderedKey = key;
    this.healthNode.replaceChildren(healthLine(snapshot.status));
    if (snapshot.models.length === 0) {
      this.listNode.replaceChildren(
        h(
          'p',
          { class: 'jp-KmModels-muted' },
          'No registered models yet: %train or %register one.'
        )
      );
      return;
    }
    const handlers = {
      act: (name: string, action: Action, version?: number) =>
        void this.act(name, action, version),
      select: (name: string, version: number) =>
        this.selected.set(name, version)
    };
    this.listNode.replaceChildren(
      ...snapshot.models.map(m =>
        modelCard(
          m,
          this.selected.get(m.name),
          this.busyModel !== null,
          handlers,
          generationLine(
            snapshot.status?.models[m.name],
            this.tokenRates[m.name] ?? null
          ),
          qualityLine(snapshot.status?.quality?.[m.name])
        )
      )
    );
  }

  private async act(
    name: string,
    action: Action,
    version?: number
  ): Promise<void> {
    if (
      this.busyModel !== null ||
      !(await confirmAction(name, action, version))
    ) {
      return;
    }
    this.busyModel = name;
    this.actionError = '';
    this.showError('');
    this.noticeNode.textContent = `${name}: ${action}${version !== undefined ? ` v${version}` : ''}…`;
    this.render(true);
    try {
      const body =
        action === 'deploy' && version !== undefined ? { version } : {};
      const result = await this.client.transition(name, action, body);
      this.noticeNode.textContent = describe(result);
      this.apply(result);
    } catch (error) {
      this.noticeNode.textContent = '';
      this.actionError = String((error as Error).message ?? error);
      this.showError(this.actionError);
    } finally {
      this.busyModel = null;
      this.selected.delete(name);
    }
    if (this.pending !== null) {
      await this.pending; // a refresh begun before the action: its answer is discarded
    }
    await this.refresh();
    this.render(true);
  }

  /** Show what the action's answer says at once, before the next refresh confirms it. */
  private apply(result: ITransitionResult): void {
    this.generation += 1;
    const model = this.snapshot?.models.find(m => m.name === result.name);
    if (this.snapshot === null || model === undefined || result.unchanged) {
      return;
    }
    model.live_version = result.version;
    model.versions.forEach(v => (v.live = v.version === result.version));
    const event: IHistoryEvent = {
      time: new Date().toISOString(),
      action: result.action,
      from_version: result.previous_version,
      to_version: result.version
    };
    model.history = [...(model.history ?? []), event];
  }

  private showError(message: string): void {
    this.errorNode.textContent = message;
    this.errorNode.title = message;
    this.errorNode.hidden = message === '';
  }

  private readonly client: ModelsClient;
  private readonly poll: Poll;
  private readonly healthNode = document.createElement('div');
  private readonly errorNode = document.createElement('div');
  private readonly noticeNode = document.createElement('div');
  private readonly listNode = document.createElement('div');
  private readonly selected = new Map<string, number>();
  private snapshot: ISnapshot | null = null;
  private tokenRates: { [name: string]: number } = {}; // language models, last two snapshots
  private renderedKey = '';
  private busyModel: string | null = null;
  private pending: Promise<boolean> | null = null;
  private actionError = ''; // the last action's error: shown until the next action
  private generation = 0; // bumped by each action: loads begun before it are stale
}

/** Tokens/s of each language model between two status snapshots of the same version. */
function tokensPerSecond(
  before: IServerStatus | null,
  now: IServerStatus | null
): { [name: string]: number } {
  const rates: { [name: string]: number } = {};
  const seconds = (now?.snapshot_at ?? 0) - (before?.snapshot_at ?? 0);
  if (!before || !now || !before.snapshot_at || seconds <= 0) {
    return rates;
  }
  for (const [name, served] of Object.entries(now.models)) {
    const earlier = before.models[name];
    const tokens = served.stats?.tokens;
    const previous = earlier?.stats?.tokens;
    if (
      served.generation &&
      earlier?.version === served.version &&
      tokens !== undefined &&
      previous !== undefined &&
      tokens >= previous
    ) {
      rates[name] = (tokens - previous) / seconds;
    }
  }
  return rates;
}

/** Changing what is live (or serving nothing) is asked once more: a stray click would
 * otherwise reach every client of the model. */
async function confirmAction(
  name: string,
  action: Action,
  version?: number
): Promise<boolean> {
  const what =
    action === 'deploy'
      ? `Deploy ${name} v${version}? It becomes the live version for every client.`
      : action === 'rollback'
        ? `Roll ${name} back to the version live before this one?`
        : `Undeploy ${name}? Its clients get 404 until a version is deployed again.`;
  const label = {
    deploy: 'Deploy',
    rollback: 'Roll back',
    undeploy: 'Undeploy'
  }[action];
  const accept =
    action === 'undeploy'
      ? Dialog.warnButton({ label })
      : Dialog.okButton({ label });
  const answer = await showDialog({
    title: `${label} ${name}`,
    body: what,
    buttons: [Dialog.cancelButton(), accept]
  });
  return answer.button.accept;
}

/** One line for a finished transition, e.g. "digits: rollback v2 → v1 (8 ms)". */
function describe(result: ITransitionResult): string {
  if (result.unchanged) {
    return `${result.name}: v${result.version} is already live; nothing changed`;
  }
  const from =
    result.previous_version === null ? '–' : `v${result.previous_version}`;
  const to = result.version === null ? 'nothing live' : `v${result.version}`;
  // a rollback to the standby loads nothing: say so rather than "0 ms"
  const took =
    result.reused || !result.load_ms
      ? ''
      : ` (loaded in ${Math.round(result.load_ms)} ms)`;
  return `${result.name}: ${result.action} ${from} → ${to}${took}`;
}
