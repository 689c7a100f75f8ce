//! ember's runtime: the pod/container API, its persisted state, the agent client, the OCI
//! runtime face and the command line of the `ember` binary.

pub mod cli;
pub mod oci;
