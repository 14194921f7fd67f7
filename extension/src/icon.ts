import { LabIcon } from '@jupyterlab/ui-components';

// A stack of model layers with a live dot; `jp-icon3` lets the theme pick the colour.
const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M12 2 2 7l10 5 10-5-10-5zm0 12.2L4.2 10.3 2 11.4l10 5 10-5-2.2-1.1L12 14.2z"/>
    <path d="M12 18.4 4.2 14.5 2 15.6l10 5 3.1-1.55a5 5 0 0 1-.1-.95c0-.3.03-.6.08-.9L12 18.4z"/>
    <circle cx="19" cy="19" r="3"/>
  </g>
</svg>`;

export const modelsIcon = new LabIcon({
  name: 'kernel-magics:models',
  svgstr: svg
});
