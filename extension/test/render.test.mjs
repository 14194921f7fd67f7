// The Models panel's DOM (src/render.ts, compiled to lib/ by `jlpm build:lib`), under node's
// test runner with jsdom's document: what a card shows for a model and what its buttons ask.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { JSDOM } from 'jsdom';

const { window } = new JSDOM('<!doctype html><body></body>');
globalThis.document = window.document;
const { healthLine, modelCard } = await import('../lib/render.js');

const version = (n, live, accuracy) => ({
  version: n,
  created: 1700000000 + n,
  run_id: `run${n}`,
  task: 'classification',
  format: 'pt2',
  metrics: { accuracy },
  aliases: live ? ['production'] : [],
  live,
  tags: {},
  key_metrics: { accuracy }
});
const event = (action, from, to) => ({
  time: '2026-12-01T10:00:00Z',
  action,
  from_version: from,
  to_version: to
});
const digits = {
  name: 'digits',
  live_version: 2,
  served_version: 2,
  versions: [
    version(1, false, 0.9),
    version(2, true, 0.95),
    version(3, false, 0.5)
  ],
  history: [
    event('deploy', null, 1),
    event('deploy', 1, 2),
    event('rollback', 2, 1),
    event('deploy', 1, 2),
    event('deploy', 2, 3),
    event('rollback', 3, 2)
  ]
};

test('a card shows what is live and served, newest version first in the picker', () => {
  const card = modelCard(digits, undefined, false, { act() {}, select() {} });
  assert.equal(card.dataset.model, 'digits');
  assert.equal(
    card.querySelector('.jp-KmModels-liveVersion').textContent,
    'live v2'
  );
  assert.match(card.textContent, /served v2/);
  const options = [...card.querySelectorAll('.jp-KmModels-picker option')];
  assert.deepEqual(
    options.map(o => o.value),
    ['3', '2', '1']
  );
  assert.equal(card.querySelector('.jp-KmModels-picker').value, '3');
  const liveRows = card.querySelectorAll('tr.jp-KmModels-live');
  assert.equal(liveRows.length, 1);
  assert.match(liveRows[0].textContent, /live/);
});

test('the last five events are listed, newest first', () => {
  const card = modelCard(digits, undefined, false, { act() {}, select() {} });
  const items = [...card.querySelectorAll('ul.jp-KmModels-events li')];
  assert.equal(items.length, 5);
  assert.match(items[0].textContent, /rollback v3 → v2$/);
  assert.match(items[4].textContent, /deploy v1 → v2$/);
  const none = modelCard({ ...digits, history: [] }, undefined, false, {
    act() {},
    select() {}
  });
  assert.match(none.textContent, /no deployments yet/);
});

test('buttons ask for the selected version and are disabled while an action runs', () => {
  const asked = [];
  const handlers = { act: (...args) => asked.push(args), select() {} };
  const card = modelCard(digits, 1, false, handlers);
  card.querySelector('button[data-action="deploy"]').click();
  card.querySelector('button[data-action="undeploy"]').click();
  assert.deepEqual(asked, [
    ['digits', 'deploy', 1],
    ['digits', 'undeploy']
  ]);
  const busy = modelCard(digits, 1, true, handlers);
  for (const node of busy.querySelectorAll('button, select')) {
    assert.equal(node.disabled, true);
  }
});

test('the health line says when nothing is serving', () => {
  const line = healthLine(null);
  assert.equal(line.dataset.status, 'stopped');
});
