//! ember's guest agent library: the host<->agent protocol (shared with the runtime) and the
//! agent's own logic. The `ember-agent` binary is PID 1 in the guest.

pub mod client;
pub mod protocol;
