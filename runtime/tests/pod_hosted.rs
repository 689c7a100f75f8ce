//! A pod whose VM is hosted by the calling process ([`Runtime::hosting_vms`], what
//! containerd's shim v2 does: the shim is the pod's process), in host-agent mode: the record
//! names this process, marked hosted, and no pod process of its own is started; containers run
//! and exit as in any pod; a stop ends the VM's threads and removes its sockets while this
//! process lives on; a VM that ends on its own is recorded stopped with the reason, its
//! threads gone too. One test in its own binary: it counts this process's threads by name.

mod support;

use runtime::api::{ContainerConfig, PodConfig, ProcessSpec, RootfsConfig, Runtime, State};
use runtime::config::Machine;
use std::path::Path;
use std::time::Duration;
use support::{prerequisites, processes_naming, wait_for, Env};

/// Names of this process's threads that serve a hosted pod.
fn pod_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| {
            [
                "pod-vmm",
                "control",
                "announce",
                "agent-watch",
                "agent-events",
            ]
            .contains(&c.as_str())
        })
        .collect()
}

fn sh(rootfs: &Path, script: &str) -> ContainerConfig {
    ContainerConfig {
        rootfs: RootfsConfig::GuestPath {
            path: rootfs.to_string_lossy().into_owned(),
        },
        process: ProcessSpec::new(["sh", "-c", script]),
        ..ContainerConfig::default()
    }
}

#[test]
fn a_hosted_pod_runs_in_this_process_and_its_threads_end_with_its_vm() {
    let Some(agent) =
        prerequisites("a_hosted_pod_runs_in_this_process_and_its_threads_end_with_its_vm")
    else {
        return;
    };
    let env = Env::new("hosted", agent.clone());
    let rootfs = env.rootfs();
    let rt = Runtime::new(&env.root).hosting_vms();
    let config = PodConfig {
        machine: Machine::HostAgent { agent },
        ..PodConfig::default()
    };
    let me = std::process::id() as i32;

    // Started, stopped by request.
    rt.create_pod("p", config.clone()).unwrap();
    rt.create_container("p", "c", sh(&rootfs, "echo hosted; exit 7"))
        .unwrap();
    let info = rt.start_pod("p").unwrap();
    assert_eq!(info.vmm_pid, Some(me));
    assert!(info.vmm_hosted);
    assert!(
        processes_naming(&env.root).iter().all(|pid| {
            !std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__vmm"))
        }),
        "a pod process of its own was started"
    );
    assert!(
        pod_threads().contains(&"pod-vmm".to_string()),
        "{:?}",
        pod_threads()
    );
    rt.start_container("p", "c").unwrap();
    assert_eq!(rt.wait_process("p", "c", None).unwrap(), 7);
    let status = rt.pod_status("p").unwrap();
    assert_eq!(status.state, State::Running);
    let stopped = rt.stop_pod("p").unwrap();
    assert_eq!(stopped.state, State::Stopped);
    let dir = env.root.join("@pods/p");
    assert!(!dir.join("control.sock").exists());
    assert!(
        wait_for(Duration::from_secs(10), || pod_threads().is_empty()),
        "threads of the stopped pod left: {:?}",
        pod_threads()
    );

    // Started again, then its machine dies under it (the host agent killed): recorded
    // stopped by the hosting thread, with why; this process carries on.
    let info = rt.start_pod("p").unwrap();
    assert!(info.vmm_hosted);
    let agents: Vec<i32> = processes_naming(&env.root)
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("ember-agent"))
        })
        .collect();
    assert_eq!(agents.len(), 1, "{agents:?}");
    // SAFETY: plain kill(2) of the agent process this pod started.
    unsafe { libc::kill(agents[0], libc::SIGKILL) };
    assert!(
        wait_for(Duration::from_secs(20), || rt
            .pod_status("p")
            .is_ok_and(|s| s.state == State::Stopped)),
        "the pod was not recorded stopped: {:?}",
        rt.pod_status("p")
    );
    let status = rt.pod_status("p").unwrap();
    assert!(status.stop_reason.is_some(), "{status:?}");
    assert_eq!(status.vmm_pid, None);
    assert!(
        wait_for(Duration::from_secs(10), || pod_threads().is_empty()),
        "threads of the ended pod left: {:?}",
        pod_threads()
    );
    rt.delete_pod("p", false).unwrap();
    assert!(!dir.exists());
}
