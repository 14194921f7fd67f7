/**
 * kernel-magics in JupyterLab: a left-side "Models" panel (registered models, the live version,
 * the inference process's health, recent deployments; Deploy / Rollback / Undeploy) and a
 * command-palette entry that opens it.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';

import { modelsIcon } from './icon';
import { ModelsPanel } from './panel';

/** The sidebar widget's id (also its tab's ``data-id``). */
export const PANEL_ID = 'kernel-magics-models';
export const OPEN_COMMAND = 'kernel-magics:open-models-panel';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'kernel-magics-lab:models-panel',
  description: 'The kernel-magics Models panel.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const panel = new ModelsPanel(app.serviceManager.serverSettings);
    panel.id = PANEL_ID;
    panel.title.icon = modelsIcon;
    panel.title.caption = 'Models (kernel-magics)';
    app.shell.add(panel, 'left', { rank: 650 });
    restorer?.add(panel, PANEL_ID);

    app.commands.addCommand(OPEN_COMMAND, {
      label: 'Open Models panel',
      caption: 'Show the kernel-magics Models panel',
      icon: modelsIcon,
      execute: () => app.shell.activateById(PANEL_ID)
    });
    palette?.addItem({ command: OPEN_COMMAND, category: 'kernel-magics' });
  }
};

export default plugin;
