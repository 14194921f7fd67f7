/**
 * DOM for the Models panel, built from the REST answers. Pure functions of their arguments:
 * the panel decides when to call them.
 */
import {
  Action,
  IHistoryEvent,
  IModelSummary,
  IServedModel,
  IServerStatus,
  IVersionRow
} from './api';

/** How many deployment events each model card lists (the models route sends as many, the
 * panel appends an action's event to them until the next refresh). */
const EVENTS_SHOWN = 5;

type Child = Node | string | null | undefined | false;

export function h(
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

/** "18:23" today, "Nov 29, 18:23" another day. */
function shortTime(date: Date): string {
  const today = new Date().toDateString() === date.toDateString();
  const time = { hour: '2-digit', minute: '2-digit', hour12: false } as const;
  return today
    ? date.toLocaleTimeString(undefined, time)
    : date.toLocaleString(undefined, {
        month: 'short',
        day: 'numeric',
        ...time
      });
}

function formatNumber(value: number): string {
  return Number.isInteger(value) ? String(value) : value.toPrecision(3);
}

export function healthLine(status: IServerStatus | null): HTMLElement {
  if (status === null) {
    return h(
      'div',
      { class: 'jp-KmModels-health', 'data-status': 'stopped' },
      h('span', { class: 'jp-KmModels-dot' }),
      'inference process not running (a deploy starts it)'
    );
  }
  const workers = status.workers.length;
  const where = (status.url ?? '').replace(/^https?:\/\//, '');
  const summary = [
    `inference process ${status.status}`,
    `${workers} worker${workers === 1 ? '' : 's'}`,
    where
  ].filter(Boolean);
  const details = [
    ...summary,
    status.pid !== null ? `supervisor pid ${status.pid}` : ''
  ];
  return h(
    'div',
    {
      class: 'jp-KmModels-health',
      'data-status': status.status,
      title: details.filter(Boolean).join('\n')
    },
    h('span', { class: 'jp-KmModels-dot' }),
    summary.join(' · ')
  );
}

function lineage(version: IVersionRow): string {
  const parent = version.tags['km.parent'];
  const recipe = version.tags['km.recipe'];
  return [parent ? `from ${parent}` : '', recipe ?? '']
    .filter(Boolean)
    .join(' · ');
}

/** "accuracy 0.961 · f1_macro 0.958": every key metric of a version, for its tooltip. */
function allMetrics(v: IVersionRow): string {
  return Object.entries(v.key_metrics ?? {})
    .map(([n, value]) => `${n} ${formatNumber(value)}`)
    .join(' · ');
}

function versionTable(model: IModelSummary): HTMLElement {
  const versions = [...model.versions].sort((a, b) => b.version - a.version);
  // The sidebar is narrow: one column, the headline metric (the first key metric the server
  // names: accuracy, mse…); every metric is in the row's tooltip and in %models.
  const metricNames: string[] = [];
  for (const v of versions) {
    const first = Object.keys(v.key_metrics ?? {})[0];
    if (first !== undefined && metricNames.length === 0) {
      metricNames.push(first);
    }
  }
  const rows: HTMLElement[] = [];
  for (const v of versions) {
    const about = [
      allMetrics(v),
      v.task,
      v.format,
      v.run_id ? `run ${v.run_id}` : ''
    ].filter(Boolean);
    rows.push(
      h(
        'tr',
        {
          'data-version': String(v.version),
          class: v.live ? 'jp-KmModels-live' : '',
          title: about.join(' · ')
        },
        h(
          'td',
          {},
          `v${v.version}`,
          v.live ? h('span', { class: 'jp-KmModels-badge' }, 'live') : null
        ),
        h('td', {}, shortTime(new Date(v.created * 1000))),
        ...metricNames.map(n =>
          h(
            'td',
            {},
            n in (v.key_metrics ?? {}) ? formatNumber(v.key_metrics[n]) : ''
          )
        )
      )
    );
    const origin = lineage(v);
    if (origin) {
      rows.push(
        h(
          'tr',
          { class: 'jp-KmModels-lineage' },
          h('td', { colspan: String(2 + metricNames.length) }, `↳ ${origin}`)
        )
      );
    }
  }
  const head = h(
    'tr',
    {},
    ...['version', 'created', ...metricNames].map(t => h('th', {}, t))
  );
  return h(
    'div',
    { class: 'jp-KmModels-tableScroll' },
    h(
      'table',
      { class: 'jp-KmModels-versions' },
      h('thead', {}, head),
      h('tbody', {}, ...rows)
    )
  );
}

function eventList(history: IHistoryEvent[]): HTMLElement {
  const shown = history.slice(-EVENTS_SHOWN).reverse();
  if (shown.length === 0) {
    return h(
      'div',
      { class: 'jp-KmModels-events jp-KmModels-muted' },
      'no deployments yet'
    );
  }
  const item = (e: IHistoryEvent) => {
    const from = e.from_version === null ? '–' : `v${e.from_version}`;
    const to = e.to_version === null ? '–' : `v${e.to_version}`;
    const when = e.time ? new Date(e.time) : null;
    return h(
      'li',
      { 'data-action': e.action, title: when ? when.toLocaleString() : '' },
      h('span', { class: 'jp-KmModels-muted' }, when ? shortTime(when) : ''),
      ` ${e.action} ${from} → ${to}`,
      e.reason ? h('div', { class: 'jp-KmModels-muted' }, e.reason) : null
    );
  };
  return h(
    'div',
    {},
    h('div', { class: 'jp-KmModels-subtitle' }, 'recent deployments'),
    h('ul', { class: 'jp-KmModels-events' }, ...shown.map(item))
  );
}

function button(
  label: string,
  action: Action,
  name: string,
  busy: boolean,
  onClick: () => void
): HTMLButtonElement {
  const node = h(
    'button',
    {
      class: `jp-KmModels-button jp-KmModels-${action}`,
      'data-action': action,
      'data-model': name,
      type: 'button'
    },
    label
  ) as HTMLButtonElement;
  node.disabled = busy;
  node.addEventListener('click', onClick);
  return node;
}

function milliseconds(value: number | null | undefined): string {
  return value === null || value === undefined
    ? '–'
    : `${Math.round(value)} ms`;
}

/** A served language model's figures, one line: tokens/s (between the last two snapshots,
 * null before the second), time to first token p50/p99 and inter-token latency p99 (since the
 * process started), running and queued sequences, KV-cache use. Null for other models. */
export function generationLine(
  served: IServedModel | undefined,
  tokensPerSecond: number | null
): HTMLElement | null {
  const engine = served?.generation;
  if (!served || !engine) {
    return null;
  }
  const stats = served.stats ?? {};
  const kv =
    engine.kv_cache_use === null
      ? '–'
      : `${(100 * engine.kv_cache_use).toFixed(1)}%`;
  const parts = [
    `${tokensPerSecond === null ? '–' : tokensPerSecond.toFixed(1)} tokens/s`,
    `TTFT p50 ${milliseconds(stats.ttft_p50_ms)}, p99 ${milliseconds(stats.ttft_p99_ms)}`,
    `ITL p99 ${milliseconds(stats.inter_token_p99_ms)}`,
    `running ${engine.running}/${engine.max_running}`,
    `queued ${engine.queued}`,
    `KV cache ${kv} of ${engine.kv_cache_tokens.toLocaleString()} tokens`
  ];
  return h(
    'div',
    {
      class: 'jp-KmModels-generation',
      title:
        'language model: tokens/s since the last refresh; latencies since the process started'
    },
    parts.join(' · ')
  );
}

/** A served model's quality, a line per version as the server wrote it for %monitor:
 * "v1 drift: b, d flagged (max PSI 0.42) over 10,000 rows · live accuracy 0.930 …". Null
 * when there is neither a drift check nor feedback. */
export function qualityLine(lines: string[] | undefined): HTMLElement | null {
  if (!lines || lines.length === 0) {
    return null;
  }
  return h(
    'div',
    {
      class: 'jp-KmModels-quality',
      title:
        "the inference process's latest drift check; live metrics from feedback"
    },
    ...lines.map(line => h('div', {}, line))
  );
}

/** One model: live/served versions, the actions, a language model's figures, its quality
 * line, its versions and its last events. */
export function modelCard(
  model: IModelSummary,
  selected: number | undefined,
  busy: boolean,
  handlers: ICardHandlers,
  generation: HTMLElement | null = null,
  quality: HTMLElement | null = null
): HTMLElement {
  const name = model.name;
  const live =
    model.live_version === null
      ? 'nothing live'
      : `live v${model.live_version}`;
  const served =
    model.served_version === null
      ? 'not served'
      : `served v${model.served_version}`;
  const newest = Math.max(...model.versions.map(v => v.version));

  const picker = h('select', {
    class: 'jp-KmModels-picker',
    'data-model': name,
    title: 'version to deploy'
  }) as HTMLSelectElement;
  for (const v of [...model.versions].sort((a, b) => b.version - a.version)) {
    picker.append(h('option', { value: String(v.version) }, `v${v.version}`));
  }
  picker.value = String(selected ?? newest);
  picker.disabled = busy;
  picker.addEventListener('change', () =>
    handlers.select(name, Number(picker.value))
  );

  return h(
    'section',
    { class: 'jp-KmModels-card', 'data-model': name },
    h(
      'header',
      {},
      h('span', { class: 'jp-KmModels-name' }, name),
      h(
        'span',
        {
          class: 'jp-KmModels-liveVersion',
          'data-live': String(model.live_version ?? '')
        },
        live
      ),
      h('span', { class: 'jp-KmModels-muted' }, served)
    ),
    h(
      'div',
      { class: 'jp-KmModels-actions' },
      picker,
      button('Deploy', 'deploy', name, busy, () =>
        handlers.act(name, 'deploy', Number(picker.value))
      ),
      button('Rollback', 'rollback', name, busy, () =>
        handlers.act(name, 'rollback')
      ),
      button('Undeploy', 'undeploy', name, busy, () =>
        handlers.act(name, 'undeploy')
      )
    ),
    ...(generation ? [generation] : []),
    ...(quality ? [quality] : []),
    versionTable(model),
    eventList(model.history ?? [])
  );
}
