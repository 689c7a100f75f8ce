//! ember's runtime: the pod/container API, its persisted state, the agent client, the OCI
//! runtime face and the command line of the `ember` binary.
//!
//! - [`api`]: pods and containers (create, start, stop, delete, exec, ...), the library face
//!   other code (the OCI commands) builds on.
//! - [`state`]: versioned, atomically written records under the state root, and pod locks.
//! - [`pod_vmm`]: the detached per-pod ember process that runs a pod's VM.

pub mod agent_link;
pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod hooks;
pub mod logging;
pub mod network;
pub mod oci;
pub mod pod_vmm;
pub mod state;
pub mod timeouts;
