//! Server-side executions (issue 8): the workflow graph and its validation, the retry policy
//! every block shares, and (as they land) the runner, the AI router and the webhook client.

pub mod ai;
pub mod graph;
pub mod retry;
