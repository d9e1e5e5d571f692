/** `@resonant/client`: rooms, save status, workflow helpers, presence, undo and executions. */
export { ResonantClient } from './client.js'
export { Room, type RoomEvent } from './room.js'
export { WorkflowDoc, conditionHandles, connectionProblem, routesErrors, ERROR_HANDLE, type WorkflowChange, type BlockPatch, type RepairReport } from './workflow.js'
export { UndoController, type UndoOptions } from './undo.js'
export {
  isTextField,
  diffText,
  transformIndex,
  transformSelection,
  spliceDelta,
  readText,
  applyDelta,
  bindTextInput,
  type TextInputLike,
  type TextHost,
  type BindTextOptions,
  type FieldPart,
  type TextSplice,
  type TextDelta,
  type Selection,
} from './text.js'
export { Presence } from './presence.js'
export { CLOSE, type ClientMsg, type ServerMsg, type ExecutionRequest } from './protocol.js'
export { fold as foldExecutionEvent, type ExecutionHandle } from './executions.js'
export {
  blockSchema,
  blockTypes,
  checkConfig,
  specOf,
  type BlockSchema,
  type BlockTypeSpec,
  type FieldSpec,
  type FieldKind,
  type ConfigProblem,
} from './schema.js'
export * from './types.js'
export { RestClient, RestError, type RestOptions, type Schemas, type Page, type WorkflowContent } from './rest.js'
