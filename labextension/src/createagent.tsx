/** The form creating an agent; providers and runtimes come from the manager's catalogue. */

import { Button, HTMLSelect } from '@jupyterlab/ui-components';
import * as React from 'react';

import { agentCreateRequest, IAgentCreate, ICatalog } from './protocol';

export interface ICreateAgentProps {
  catalog: ICatalog;
  onCreate: (request: IAgentCreate) => Promise<void>;
  onCancel: () => void;
}

export function CreateAgentForm({ catalog, onCreate, onCancel }: ICreateAgentProps): JSX.Element {
  const runtimes = catalog.runtimes.filter(r => r.available);
  const [name, setName] = React.useState('');
  const [provider, setProvider] = React.useState(catalog.providers[0]?.name ?? '');
  const [runtime, setRuntime] = React.useState(
    (runtimes.find(r => r.default) ?? runtimes[0])?.name ?? ''
  );
  const [image, setImage] = React.useState('');
  const [config, setConfig] = React.useState('');
  const [problem, setProblem] = React.useState<string | null>(null);
  const described = catalog.providers.find(p => p.name === provider);

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    const request = agentCreateRequest(name, provider, runtime, image, config);
    if (typeof request === 'string') {
      setProblem(request);
      return;
    }
    setProblem(null);
    await onCreate(request);
  };
  return (
    <form className="jp-AgenstraChat-create" onSubmit={e => void submit(e)}>
      <label>
        Name
        <input className="jp-mod-styled" value={name} required autoFocus
          placeholder="my-agent" aria-label="Agent name"
          onChange={e => setName(e.currentTarget.value)} />
      </label>
      <label>
        Provider
        <HTMLSelect aria-label="Provider" value={provider}
          options={catalog.providers.map(p => p.name)}
          onChange={e => setProvider(e.currentTarget.value)} />
      </label>
      {described && <div className="jp-AgenstraChat-hint">{described.description}</div>}
      <label>
        Runtime
        <HTMLSelect aria-label="Runtime" value={runtime}
          options={runtimes.map(r => ({ value: r.name, label: `${r.name}: ${r.description}` }))}
          onChange={e => setRuntime(e.currentTarget.value)} />
      </label>
      {runtime === 'docker' && (
        <label>
          Image
          <input className="jp-mod-styled" value={image} placeholder="(manager default)"
            aria-label="Image" onChange={e => setImage(e.currentTarget.value)} />
        </label>
      )}
      <label>
        Config (JSON, optional)
        <textarea className="jp-mod-styled" value={config} rows={3} aria-label="Config"
          placeholder='{"preset": "claude"}' onChange={e => setConfig(e.currentTarget.value)} />
      </label>
      {problem && <div className="jp-AgenstraChat-formError" role="alert">{problem}</div>}
      <div className="jp-AgenstraChat-formButtons">
        <Button small type="button" onClick={onCancel}>Cancel</Button>
        <Button small type="submit" className="jp-mod-accept">Create</Button>
      </div>
    </form>
  );
}
