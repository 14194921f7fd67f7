/**
 * DOM for the Models panel, built from the REST answers. Pure functions of their arguments:
 * the panel decides when to call them.
 */
import { Action, IHistoryEvent, IModelSummary, IServerStatus, IVersionRow } from './api';

/** How many deployment events and metrics each model card shows. */
const EVENTS_SHOWN = 5;
const METRICS_SHOWN = 2;
// Metrics worth a column, best first; the others are in MLflow.
const PREFERRED_METRICS = ['val_accuracy', 'accuracy', 'val_loss', 'loss', 'train_loss'];

type Child = Node | string | null | undefined | false;

function h(
  tag: string,
  attrs: { [name: string]: string } = {},
  ...children: Child[]
): HTMLElement {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child);
    }
  }
  return node;
}

/** What a card asks the panel to do; the panel owns the calls. */
export interface ICardHandlers {
  act(name: string, action: Action, version?: number): void;
  select(name: string, version: number): void;
}

export function healthLine(status: IServerStatus | null): HTMLElement {
  if (status === null) {
    return h(
      'div',
      { class: 'jp-KmModels-health', 'data-status': 'stopped' },
      h('span', { class: 'jp-KmModels-dot' }),
      'inference process: not running (a deploy starts it)'
    );
  }
  const workers = status.workers.length;
  const parts = [
    `inference process: ${status.status}`,
    status.url ?? '',
    status.pid !== null ? `pid ${status.pid}` : '',
    `${workers} worker${workers === 1 ? '' : 's'}`
  ].filter(Boolean);
  return h(
    'div',
    { class: 'jp-KmModels-health', 'data-status': status.status, title: parts.join('\n') },
    h('span', { class: 'jp-KmModels-dot' }),
    parts.join(' · ')
  );
}

function shownMetrics(version: IVersionRow): string {
  const names = Object.keys(version.metrics);
  const ordered = [
    ...PREFERRED_METRICS.filter(n => names.includes(n)),
    ...names.filter(n => !PREFERRED_METRICS.includes(n)).sort()
  ];
  return ordered
    .slice(0, METRICS_SHOWN)
    .map(n => `${n} ${formatNumber(version.metrics[n])}`)
    .join(', ');
}

function formatNumber(value: number): string {
  return Number.isInteger(value) ? String(value) : value.toPrecision(4);
}

function lineage(version: IVersionRow): string {
  const parent = version.tags['km.parent'];
  const recipe = version.tags['km.recipe'];
  return [parent ? `from ${parent}` : '', recipe ?? ''].filter(Boolean).join(' · ');
}

function versionTable(model: IModelSummary): HTMLElement {
  const rows = [...model.versions]
    .sort((a, b) => b.version - a.version)
    .map(v =>
      h(
        'tr',
        {
          'data-version': String(v.version),
          class: v.live ? 'jp-KmModels-live' : ''
        },
        h('td', {}, `v${v.version}`, v.live ? h('span', { class: 'jp-KmModels-badge' }, 'live') : null),
        h('td', {}, new Date(v.created * 1000).toLocaleString()),
        h('td', {}, v.task ?? ''),
        h('td', {}, shownMetrics(v)),
        h('td', {}, lineage(v))
      )
    );
  const head = h(
    'tr',
    {},
    ...['version', 'created', 'task', 'metrics', 'lineage'].map(t => h('th', {}, t))
  );
  return h('table', { class: 'jp-KmModels-versions' }, h('thead', {}, head), h('tbody', {}, ...rows));
}

function eventList(history: IHistoryEvent[]): HTMLElement {
  const shown = history.slice(-EVENTS_SHOWN).reverse();
  if (shown.length === 0) {
    return h('div', { class: 'jp-KmModels-events jp-KmModels-muted' }, 'no deployments yet');
  }
  const item = (e: IHistoryEvent) => {
    const from = e.from_version === null ? '–' : `v${e.from_version}`;
    const to = e.to_version === null ? '–' : `v${e.to_version}`;
    const when = e.time ? new Date(e.time).toLocaleString() : '';
    return h('li', { 'data-action': e.action }, `${when}  ${e.action} ${from} → ${to}`);
  };
  return h('ul', { class: 'jp-KmModels-events' }, ...shown.map(item));
}

function button(label: string, action: Action, name: string, busy: boolean, onClick: () => void) {
  const node = h('button', {
    class: 'jp-Button jp-mod-styled jp-mod-reject jp-KmModels-button',
    'data-action': action,
    'data-model': name,
    type: 'button'
  }, label) as HTMLButtonElement;
  node.disabled = busy;
  node.addEventListener('click', onClick);
  return node;
}

/** One model: live/served versions, the actions, its versions and its last events. */
export function modelCard(
  model: IModelSummary,
  history: IHistoryEvent[],
  selected: number | undefined,
  busy: boolean,
  handlers: ICardHandlers
): HTMLElement {
  const name = model.name;
  const live = model.live_version === null ? 'none' : `v${model.live_version}`;
  const served = model.served_version === null ? 'not served' : `served v${model.served_version}`;
  const newest = Math.max(...model.versions.map(v => v.version));
  const chosen = selected ?? newest;

  const picker = h('select', {
    class: 'jp-mod-styled jp-KmModels-picker',
    'data-model': name,
    title: 'version to deploy'
  }) as HTMLSelectElement;
  for (const v of [...model.versions].sort((a, b) => b.version - a.version)) {
    picker.append(h('option', { value: String(v.version) }, `v${v.version}`));
  }
  picker.value = String(chosen);
  picker.disabled = busy;
  picker.addEventListener('change', () => handlers.select(name, Number(picker.value)));

  return h(
    'section',
    { class: 'jp-KmModels-card', 'data-model': name },
    h(
      'header',
      {},
      h('span', { class: 'jp-KmModels-name' }, name),
      h('span', { class: 'jp-KmModels-liveVersion', 'data-live': String(model.live_version ?? '') }, `live ${live}`),
      h('span', { class: 'jp-KmModels-muted' }, served)
    ),
    h(
      'div',
      { class: 'jp-KmModels-actions' },
      picker,
      button('Deploy', 'deploy', name, busy, () =>
        handlers.act(name, 'deploy', Number(picker.value))
      ),
      button('Rollback', 'rollback', name, busy, () => handlers.act(name, 'rollback')),
      button('Undeploy', 'undeploy', name, busy, () => handlers.act(name, 'undeploy'))
    ),
    versionTable(model),
    eventList(history)
  );
}

export { h };
