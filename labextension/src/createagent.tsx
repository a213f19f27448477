/**
 * The form creating an agent; providers and runtimes come from the manager's catalogue.
 * Every runtime is listed with its sandbox state; those that cannot run are disabled, with why.
 */

import { Button, HTMLSelect } from '@jupyterlab/ui-components';
import * as React from 'react';

import {
  agentCreateRequest,
  approvalsOf,
  configPlaceholder,
  DEFAULT_PERMISSION_POLICY,
  IAgentCreate,
  ICatalog,
  IClient,
  PERMISSION_POLICIES
} from './protocol';
import { AUTOMATIC, canTake, hostOptions, IPlacement, placementOf } from './hosts';
import { NETWORK_HINT, runtimeLabel, withNetwork } from './sandbox';

export interface ICreateAgentProps {
  catalog: ICatalog;
  /** The file browser's folder when the form opened: the project it offers. */
  folder?: string;
  /** The managers (hosts) with their health; the form offers them and "automatic". */
  clients?: IClient[];
  /** The selected manager: the host chosen at first, whose catalogue the form shows. */
  clientId?: string | null;
  /** Creates the agent (elsewhere than `clientId` when `placement` says so); what went
   * wrong (the manager's refusal), or null. */
  onCreate: (request: IAgentCreate, placement?: IPlacement) => Promise<string | null>;
  onCancel: () => void;
}

type Change = React.ChangeEvent<HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement>;

/** What each `permissions` policy means, under the select. */
const POLICY_HINTS: Record<string, string> = {
  ask: 'reads inside the project are allowed; anything else asks you first',
  workspace: 'reads and edits inside the project are allowed; anything else asks',
  allow: 'everything is allowed without asking',
  deny: 'everything that needs permission is refused'
};

export function CreateAgentForm(props: ICreateAgentProps): JSX.Element {
  const { catalog, onCreate, onCancel } = props;
  const runtimes = catalog.runtimes.filter(r => r.available);
  const unavailable = catalog.runtimes.filter(r => !r.available);
  const [name, setName] = React.useState('');
  const [provider, setProvider] = React.useState(catalog.providers[0]?.name ?? '');
  const [runtime, setRuntime] = React.useState(
    (runtimes.find(r => r.default) ?? runtimes[0])?.name ?? ''
  );
  const [image, setImage] = React.useState('');
  const [config, setConfig] = React.useState('');
  const [network, setNetwork] = React.useState('');
  const [ports, setPorts] = React.useState('');
  const [project, setProject] = React.useState(props.folder ?? '');
  const [permissions, setPermissions] = React.useState<string>(DEFAULT_PERMISSION_POLICY);
  const [problem, setProblem] = React.useState<string | null>(null);
  const clients = props.clients ?? [];
  const current = clients.find(c => c.id === props.clientId);
  // The selected manager, unless it cannot take one now (down, full): then automatic.
  const [host, setHost] = React.useState(
    current && canTake(current) ? current.id : clients.length > 1 ? AUTOMATIC : props.clientId ?? ''
  );
  const hosts = hostOptions(clients);
  const elsewhere = clients.length > 1 && host !== props.clientId;
  const described = catalog.providers.find(p => p.name === provider);
  const chosen = catalog.runtimes.find(r => r.name === runtime);
  const placeholder = configPlaceholder(described);
  const approvals = approvalsOf(described, config);
  // Any edit may be the fix: the last problem goes until the next Create says otherwise.
  const field = (set: (value: string) => void) => (event: Change) => {
    set(event.currentTarget.value);
    setProblem(null);
  };

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    let request = agentCreateRequest(name, provider, runtime, image, config, {
      project,
      permissions
    });
    if (typeof request !== 'string' && runtime === 'process') {
      request = withNetwork(request, network, ports);
    }
    if (typeof request === 'string') {
      setProblem(request);
      return;
    }
    setProblem(await onCreate(request, elsewhere ? placementOf(host) : undefined));
  };
  return (
    <form className="jp-AgenstraChat-create" onSubmit={e => void submit(e)}>
      <label>
        Name
        <input className="jp-mod-styled" value={name} required autoFocus
          placeholder="my-agent" aria-label="Agent name"
          onChange={field(setName)} />
      </label>
      <label>
        Provider
        <HTMLSelect aria-label="Provider" value={provider}
          options={catalog.providers.map(p => p.name)}
          onChange={field(setProvider)} />
      </label>
      {described && <div className="jp-AgenstraChat-hint">{described.description}</div>}
      {clients.length > 1 && (
        <>
          <label>
            Host
            <HTMLSelect aria-label="Host" value={host} options={hosts}
              title={hosts.find(h => h.value === host)?.label}
              onChange={field(setHost)} />
          </label>
          {elsewhere && (
            <div className="jp-AgenstraChat-hint">
              Providers and runtimes listed are the selected manager's; another host may
              offer others.
            </div>
          )}
        </>
      )}
      <label>
        Project folder
        <input className="jp-mod-styled" value={project} aria-label="Project"
          placeholder="(empty: a private workspace)" onChange={field(setProject)} />
      </label>
      <div className="jp-AgenstraChat-hint">
        The agent works on your files in this folder (relative to the Jupyter root), and sees
        nothing else of them. Empty: a private folder of its own.
      </div>
      <label>
        Permissions
        <HTMLSelect aria-label="Permissions" value={permissions}
          options={[...PERMISSION_POLICIES]} onChange={field(setPermissions)} />
      </label>
      <div className="jp-AgenstraChat-hint">{POLICY_HINTS[permissions]}</div>
      {approvals.approvals === 'policy' && (
        <div className="jp-AgenstraChat-hint jp-mod-policy" data-approvals="policy">
          This agent cannot ask before it acts: its policy decides.
          {approvals.note && <> {approvals.note}</>}
        </div>
      )}
      <label>
        Runtime
        <HTMLSelect aria-label="Runtime" value={runtime} title={chosen && runtimeLabel(chosen)}
          options={catalog.runtimes.map(r => ({
            value: r.name, label: runtimeLabel(r), disabled: !r.available
          }))}
          onChange={field(setRuntime)} />
      </label>
      {unavailable.map(r => (
        <div key={r.name} className="jp-AgenstraChat-hint jp-mod-unavailable">
          {r.name}: <CodeText text={r.problem || 'not available on this manager'} />
        </div>
      ))}
      {runtime === 'process' && (
        <>
          <label>
            Network
            <HTMLSelect aria-label="Network" value={network}
              options={[{ value: '', label: 'provider default' }, 'none', 'egress']}
              onChange={field(setNetwork)} />
          </label>
          <label>
            Loopback ports
            <input className="jp-mod-styled" value={ports} placeholder="e.g. 11434"
              aria-label="Loopback ports" onChange={field(setPorts)} />
          </label>
          <div className="jp-AgenstraChat-hint">{NETWORK_HINT}</div>
          {chosen?.network === 'missing' && network !== 'none' && (
            <div className="jp-AgenstraChat-hint jp-mod-unavailable">
              slirp4netns is not installed: agents with network egress cannot run
            </div>
          )}
        </>
      )}
      {runtime === 'docker' && (
        <label>
          Image
          <input className="jp-mod-styled" value={image} placeholder="(manager default)"
            aria-label="Image" onChange={field(setImage)} />
        </label>
      )}
      <label>
        Config (JSON, optional)
        <textarea className="jp-mod-styled" value={config} aria-label="Config"
          rows={Math.max(3, placeholder.split('\n').length + 1)} placeholder={placeholder}
          onChange={field(setConfig)} />
      </label>
      {problem && <div className="jp-AgenstraChat-formError" role="alert">{problem}</div>}
      <div className="jp-AgenstraChat-formButtons">
        <Button small type="button" onClick={onCancel}>Cancel</Button>
        <Button small type="submit" className="jp-mod-accept">Create</Button>
      </div>
    </form>
  );
}

/** Text with `code` spans (the manager's install hints), shown as code. */
export function CodeText({ text }: { text: string }): JSX.Element {
  return <>{text.split('`').map((part, i) => (i % 2 ? <code key={i}>{part}</code> : part))}</>;
}
