/** The controller's REST API under `{base_url}agenstra/api/`, with Jupyter's auth and XSRF. */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IPlacement } from './hosts';
import {
  API_PATH,
  HISTORY_PAGE,
  IAgent,
  IAgentCreate,
  ICatalog,
  IChatMessage,
  IClient
} from './protocol';

/** An HTTP error with the controller's message and code. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string
  ) {
    super(message);
  }
}

export class ControllerApi {
  constructor(readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {}

  clients(): Promise<IClient[]> {
    return this._request('clients');
  }

  catalog(clientId: string): Promise<ICatalog> {
    return this._request(`clients/${enc(clientId)}/providers`);
  }

  agents(clientId: string): Promise<IAgent[]> {
    return this._request(`clients/${enc(clientId)}/agents`);
  }

  createAgent(clientId: string, agent: IAgentCreate): Promise<IAgent> {
    return this._request(`clients/${enc(clientId)}/agents`, {
      method: 'POST',
      body: JSON.stringify(agent)
    });
  }

  /** Creates an agent where `placement` says: a manager, a label, or the controller's
   * placement policy (neither). */
  placeAgent(agent: IAgentCreate, placement: IPlacement): Promise<IAgent> {
    return this._request('agents', {
      method: 'POST',
      body: JSON.stringify({ ...agent, ...placement })
    });
  }

  async deleteAgent(clientId: string, agentId: string): Promise<void> {
    await this._request(`clients/${enc(clientId)}/agents/${enc(agentId)}`, {
      method: 'DELETE'
    });
  }

  /** One page of stored messages after `after` (seq). */
  messages(clientId: string, agentId: string, after: number): Promise<IChatMessage[]> {
    return this._request(
      `clients/${enc(clientId)}/agents/${enc(agentId)}/messages?after=${after}&limit=${HISTORY_PAGE}`
    );
  }

  private async _request(path: string, init: RequestInit = {}): Promise<any> {
    const url = URLExt.join(this.settings.baseUrl, ...API_PATH, path);
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (error) {
      throw new ApiError(`Cannot reach the server: ${error}`, 0, 'OFFLINE');
    }
    const text = await response.text();
    let body: any = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) {
      const message = body?.message || response.statusText || 'Request failed';
      throw new ApiError(message, response.status, body?.code || 'INTERNAL');
    }
    return body;
  }
}

function enc(part: string): string {
  return encodeURIComponent(part);
}
