/**
 * A typed client for the server's REST API (`/api/v1`): workspaces, workflows, their content,
 * versions (and the published one), comments, executions, triggers and workspace secrets. Request and response types are generated from the
 * server's own OpenAPI document (`api-types.ts`, `npm run gen:api`), so they cannot drift from
 * what the server accepts.
 */
import type { components, operations } from './api-types.js'
import { httpUrl } from './room.js'
import { ResonantError, type Block, type Connection } from './types.js'

/** Every schema the REST API names (`Schemas['Workflow']`, `Schemas['Execution']`, …). */
export type Schemas = components['schemas']

type JsonOf<R> = R extends { content: { 'application/json': infer T } } ? T : never
/** The JSON body of an operation's success response. */
type Ok<Op extends keyof operations> = operations[Op]['responses'] extends infer R
  ? JsonOf<R[Extract<keyof R, 200 | 201>]>
  : never
/** An operation's query parameters. */
type Query<Op extends keyof operations> = operations[Op]['parameters'] extends { query?: infer Q }
  ? NonNullable<Q>
  : never
/** An operation's JSON request body. */
type Body<Op extends keyof operations> = operations[Op] extends { requestBody?: infer B } ? JsonOf<NonNullable<B>> : never

/** A workflow's document as JSON (`GET /workflows/{id}/content`; docs/workflow-schema.md). */
export interface WorkflowContent {
  blocks?: Block[]
  connections?: Connection[]
  [key: string]: unknown
}

/** Options of a {@link RestClient}. */
export interface RestOptions {
  /** `http(s)://host:port` of the server (`ws(s)://…` and a trailing `/sync` are accepted). */
  url: string
  /** The caller's token (sent as `Authorization: Bearer`); null in development mode. */
  getToken?: () => Promise<string | null> | string | null
  /** A fetch implementation; defaults to the global one. */
  fetch?: typeof fetch
}

/** A REST call the server refused or could not answer; `code` is the server's stable code. */
export class RestError extends ResonantError {
  constructor(
    /** HTTP status (0 when the request never got an answer). */
    readonly status: number,
    /** `not_found`, `forbidden`, `invalid_workflow`, `quota_exceeded`, … or `network`. */
    code: string,
    message: string,
    /** The request field at fault, for validation errors. */
    readonly field: string | null = null,
    /** The server's whole error body, when it sent one. */
    readonly body: Schemas['ErrorBody'] | null = null,
  ) {
    super(code, message, { ...(body?.error ?? {}) })
    this.name = 'RestError'
  }
}

/** A page of items with the cursor of the next one (absent on the last page). */
export type Page<T> = { items: T[]; nextCursor?: string | null }

/** The REST API; see the module comment. */
export class RestClient {
  private readonly base: string
  private readonly fetchImpl: typeof fetch

  constructor(private readonly options: RestOptions) {
    // The same forms the socket accepts: http(s) or ws(s), with or without `/sync`.
    this.base = httpUrl(options.url) + '/api/v1'
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis)
  }

  /** The caller and their workspaces. */
  me(): Promise<Ok<'me'>> {
    return this.call('GET', '/me')
  }

  /** Workspaces. */
  readonly workspaces = {
    list: (query?: Query<'list_workspaces'>): Promise<Ok<'list_workspaces'>> => this.call('GET', '/workspaces', undefined, query),
    get: (id: string): Promise<Ok<'get_workspace'>> => this.call('GET', `/workspaces/${enc(id)}`),
    create: (body: Body<'create_workspace'>): Promise<Ok<'create_workspace'>> => this.call('POST', '/workspaces', body),
  }

  /**
   * A workspace's secrets, which webhook blocks read as `{{ secrets.NAME }}`. Write-only: the
   * list has names, never values. Setting or deleting one takes an owner or admin; storing one
   * needs the server's encryption key (409 without).
   */
  readonly secrets = {
    list: (workspaceId: string): Promise<Ok<'list_secrets'>> => this.call('GET', `/workspaces/${enc(workspaceId)}/secrets`),
    /** Adds the secret or replaces its value. */
    set: (workspaceId: string, name: string, value: string): Promise<Ok<'set_secret'>> =>
      this.call('PUT', `/workspaces/${enc(workspaceId)}/secrets/${enc(name)}`, { value } satisfies Body<'set_secret'>),
    delete: (workspaceId: string, name: string): Promise<void> =>
      this.call('DELETE', `/workspaces/${enc(workspaceId)}/secrets/${enc(name)}`),
  }

  /**
   * What starts a workflow without an editor: webhook URLs (`POST /hooks/{id}`, signed with the
   * trigger's secret) and cron schedules. They run the published version unless their target
   * is `draft`. The secret is shown to the workflow's editors only.
   */
  readonly triggers = {
    list: (workflowId: string): Promise<Ok<'list_triggers'>> => this.call('GET', `/workflows/${enc(workflowId)}/triggers`),
    create: (workflowId: string, body: Body<'create_trigger'>): Promise<Ok<'create_trigger'>> =>
      this.call('POST', `/workflows/${enc(workflowId)}/triggers`, body),
    get: (id: string): Promise<Ok<'get_trigger'>> => this.call('GET', `/triggers/${enc(id)}`),
    update: (id: string, body: Body<'update_trigger'>): Promise<Ok<'update_trigger'>> =>
      this.call('PATCH', `/triggers/${enc(id)}`, body),
    delete: (id: string): Promise<void> => this.call('DELETE', `/triggers/${enc(id)}`),
    /** A new secret for a webhook trigger; the old one stops working at once. */
    rotateSecret: (id: string): Promise<Ok<'rotate_secret'>> => this.call('POST', `/triggers/${enc(id)}/rotate-secret`),
  }

  /** Workflows and their live content. */
  readonly workflows = {
    list: (workspaceId: string, query?: Query<'list_workflows'>): Promise<Ok<'list_workflows'>> =>
      this.call('GET', `/workspaces/${enc(workspaceId)}/workflows`, undefined, query),
    create: (workspaceId: string, body: Body<'create_workflow'>): Promise<Ok<'create_workflow'>> =>
      this.call('POST', `/workspaces/${enc(workspaceId)}/workflows`, body),
    get: (id: string): Promise<Ok<'get_workflow'>> => this.call('GET', `/workflows/${enc(id)}`),
    update: (id: string, body: Body<'update_workflow'>): Promise<Ok<'update_workflow'>> =>
      this.call('PATCH', `/workflows/${enc(id)}`, body),
    delete: (id: string): Promise<void> => this.call('DELETE', `/workflows/${enc(id)}`),
    /** The document as JSON, as the engine would read it now. */
    content: (id: string): Promise<WorkflowContent> => this.call('GET', `/workflows/${enc(id)}/content`),
  }

  /** Saved versions of a workflow. */
  readonly versions = {
    list: (workflowId: string, query?: Query<'list_versions'>): Promise<Ok<'list_versions'>> =>
      this.call('GET', `/workflows/${enc(workflowId)}/versions`, undefined, query),
    create: (workflowId: string, body: Body<'create_version'>): Promise<Ok<'create_version'>> =>
      this.call('POST', `/workflows/${enc(workflowId)}/versions`, body),
    get: (workflowId: string, version: number): Promise<Ok<'get_version'>> =>
      this.call('GET', `/workflows/${enc(workflowId)}/versions/${version}`),
    /** Makes the live document equal to the version (editors see it as one remote change). */
    restore: (workflowId: string, version: number): Promise<Ok<'restore_version'>> =>
      this.call('POST', `/workflows/${enc(workflowId)}/versions/${version}/restore`),
    /** Makes the version the one the workflow's triggers run (422 when it is not a valid workflow). */
    publish: (workflowId: string, version: number): Promise<Ok<'publish_version'>> =>
      this.call('POST', `/workflows/${enc(workflowId)}/versions/${version}/publish`),
    /** Triggers targeting the published version start nothing until one is published again. */
    unpublish: (workflowId: string): Promise<Ok<'unpublish'>> => this.call('DELETE', `/workflows/${enc(workflowId)}/published`),
  }

  /** Comments on a workflow or one of its blocks. */
  readonly comments = {
    list: (workflowId: string, query?: Query<'list_comments'>): Promise<Ok<'list_comments'>> =>
      this.call('GET', `/workflows/${enc(workflowId)}/comments`, undefined, query),
    create: (workflowId: string, body: Body<'create_comment'>): Promise<Ok<'create_comment'>> =>
      this.call('POST', `/workflows/${enc(workflowId)}/comments`, body),
    update: (id: string, body: Body<'update_comment'>): Promise<Ok<'update_comment'>> =>
      this.call('PATCH', `/comments/${enc(id)}`, body),
    delete: (id: string): Promise<void> => this.call('DELETE', `/comments/${enc(id)}`),
  }

  /** Executions (runs) of a workflow. */
  readonly executions = {
    /** The run history, newest first; `status` and `triggerId` (a trigger's id, or `manual`) filter it. */
    list: (workflowId: string, query?: Query<'list_executions'>): Promise<Ok<'list_executions'>> =>
      this.call('GET', `/workflows/${enc(workflowId)}/executions`, undefined, query),
    start: (workflowId: string, body: Body<'start_execution'> = {}): Promise<Ok<'start_execution'>> =>
      this.call('POST', `/workflows/${enc(workflowId)}/executions`, body),
    get: (id: string): Promise<Ok<'get_execution'>> => this.call('GET', `/executions/${enc(id)}`),
    cancel: (id: string): Promise<Ok<'cancel_execution'>> => this.call('POST', `/executions/${enc(id)}/cancel`),
    events: (id: string, query?: Query<'get_events'>): Promise<Ok<'get_events'>> =>
      this.call('GET', `/executions/${enc(id)}/events`, undefined, query),
  }

  /** Every item of a paged list, following `nextCursor` (e.g. `rest.all((c) => rest.workflows.list(ws, { cursor: c }))`). */
  async *all<T>(page: (cursor: string | undefined) => Promise<Page<T>>): AsyncGenerator<T> {
    let cursor: string | undefined
    do {
      const p = await page(cursor)
      yield* p.items
      cursor = p.nextCursor ?? undefined
    } while (cursor)
  }

  private async call<T>(method: string, path: string, body?: unknown, query?: object): Promise<T> {
    const url = new URL(this.base + path)
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined && v !== null) url.searchParams.set(k, String(v))
    }
    const headers: Record<string, string> = { accept: 'application/json' }
    if (body !== undefined) headers['content-type'] = 'application/json'
    const token = await this.options.getToken?.()
    if (token) headers.authorization = `Bearer ${token}`
    let res: Response
    try {
      res = await this.fetchImpl(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
    } catch (e) {
      throw new RestError(0, 'network', `${method} ${path}: ${(e as Error)?.message ?? e}`)
    }
    const text = await res.text()
    if (!res.ok) {
      let parsed: Schemas['ErrorBody'] | null = null
      try {
        parsed = JSON.parse(text) as Schemas['ErrorBody']
      } catch {
        // Not our JSON (a proxy's page): the status line is all there is.
      }
      const e = parsed?.error
      throw new RestError(
        res.status,
        e?.code ?? `http_${res.status}`,
        e?.message ?? `${method} ${path}: HTTP ${res.status}`,
        e?.field ?? null,
        parsed,
      )
    }
    return (text ? JSON.parse(text) : undefined) as T
  }
}

function enc(segment: string): string {
  return encodeURIComponent(segment)
}
