//! Server-side executions (issue 8). So far: the workflow graph and its validation, which
//! run before anything executes.

pub mod graph;
