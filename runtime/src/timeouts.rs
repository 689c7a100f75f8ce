//! Every time limit of the runtime, named once. A hardware-KVM host boots a guest in ~100 ms
//! and answers an agent call in well under a millisecond; the limits are sized for the nested,
//! emulated test host (10-100x slower), where they must still never be what fails a healthy
//! pod.

use std::time::Duration;

/// One ordinary request/answer with a guest agent (create, start, signal, exec, ps, ...).
pub const AGENT_CALL: Duration = Duration::from_secs(60);
/// An agent call made on the way out (destroy, sync before a stop): short, since the VM
/// goes anyway.
pub const AGENT_SHORT_CALL: Duration = Duration::from_secs(5);
/// How often a pod process checks that its guest's agent answers (a ping with
/// [`AGENT_SHORT_CALL`]); the pod config's `agent_timeout_secs` says how long it may not.
pub const AGENT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long a caller whose agent connection broke looks for the pod's record to say it
/// stopped (and why), which its pod process writes once the VM is gone.
pub const POD_END_GRACE: Duration = Duration::from_secs(5);
/// One request/answer with a pod's VMM process on its control socket.
pub const POD_CONTROL: Duration = Duration::from_secs(10);
/// A pod process writing a snapshot of its VM (guest memory goes to a file).
pub const SNAPSHOT: Duration = Duration::from_secs(120);
/// A liveness probe of a pod's VMM process (`status`, `list`).
pub const POD_PING: Duration = Duration::from_secs(2);
/// A graceful guest shutdown (`"shutdown": "graceful"`), before the VM is stopped hard.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// A pod process asked to stop answers within this: the guest's sync or graceful shutdown,
/// then the VM's stop.
pub const POD_STOP: Duration = Duration::from_secs(30);
/// A VMM process asked to stop has this long to exit, after its shutdown, before it is killed.
pub const VMM_EXIT: Duration = Duration::from_secs(5);
/// A container asked to stop (SIGTERM) has this long before SIGKILL.
pub const CONTAINER_STOP_GRACE: Duration = Duration::from_secs(10);
/// The VMM process waits this long for the pod's lock to record that its VM ended.
pub const RECORD_END_LOCK: Duration = Duration::from_secs(60);
/// How long `list` waits for one pod's lock before it shows the record as it stands.
pub const LIST_LOCK: Duration = Duration::from_millis(500);
/// How long an OCI container's `start` waits for its shim's main thread to enter the
/// container's view for the engine (a few mounts and a `pivot_root`).
pub const SHIM_VIEW: Duration = Duration::from_secs(5);
/// A request to an OCI container's shim (`start`, `kill`, `exec`'s start, ...).
pub const SHIM_CALL: Duration = Duration::from_secs(120);
/// How long `create` waits for an OCI container's pod VM to get ready: well under the
/// engines' own create timeouts (podman gives up after about four minutes), so that ember's
/// error, with the VM's boot phases, is the one reported.
pub const OCI_POD_START_SECS: u64 = 120;
