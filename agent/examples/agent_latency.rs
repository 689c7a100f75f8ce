//! Measures the agent on the host (no VM): start to announce, request round trip, and the
//! container phases. Prints a table. Needs root and /bin/busybox for the container rows.
//!
//! `cargo build -p ember-agent && cargo run -p ember-agent --example agent_latency [-- N]`
//! (`EMBER_AGENT_BIN` picks another agent binary, e.g. the static release build;
//! `EMBER_AGENT_EXTRA_ARGS` adds agent flags, e.g. `--cgroup-root /sys/fs/cgroup`).

use agent::client::{self, AgentCalls, AgentClient};
use agent::protocol::{self, ContainerSpec, ProcessSpec, RootfsSpec};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn agent_bin() -> PathBuf {
    if let Ok(p) = std::env::var("EMBER_AGENT_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/examples/agent_latency -> target/<profile>/ember-agent
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(|d| d.join("ember-agent")))
        .unwrap_or_else(|| PathBuf::from("ember-agent"))
}

fn row(name: &str, samples: &[Duration]) {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let p50 = v.get(v.len() / 2).copied().unwrap_or(0.0);
    let max = v.last().copied().unwrap_or(0.0);
    println!(
        "| {name:<28} | {:>5} | {mean:>10.1} | {p50:>10.1} | {max:>10.1} |",
        v.len()
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("ember-agent-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("agent.sock");
    let announce_path = dir.join("announce.sock");

    let mut starts = Vec::new();
    let mut children = Vec::new();
    for _ in 0..n.min(10) {
        let _ = std::fs::remove_file(&announce_path);
        let listener = UnixListener::bind(&announce_path)?;
        let t0 = Instant::now();
        let extra = std::env::var("EMBER_AGENT_EXTRA_ARGS").unwrap_or_default();
        let child = Command::new(agent_bin())
            .args(extra.split_whitespace())
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--announce")
            .arg(format!("unix:{}", announce_path.display()))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdout(Stdio::null())
            .spawn()?;
        client::accept_hello(&listener)?;
        starts.push(t0.elapsed());
        children.push(child);
        if children.len() > 1 {
            // Keep only the newest agent (the socket path is shared).
            let mut old = children.remove(0);
            let _ = old.kill();
            let _ = old.wait();
        }
    }
    let connect = || -> Result<AgentClient<UnixStream>, client::ClientError> {
        Ok(AgentClient::new(client::connect_unix(&sock)?))
    };
    let mut c = connect()?;
    let mut pings = Vec::new();
    for _ in 0..n * 50 {
        let t = Instant::now();
        c.ping()?;
        pings.push(t.elapsed());
    }
    println!("| phase                        |     n |   mean us  |    p50 us  |    max us  |");
    println!("|------------------------------|-------|------------|------------|------------|");
    row("agent spawn -> Hello", &starts);
    row("Ping round trip", &pings);

    let root = nix::unistd::geteuid().is_root();
    if root && std::path::Path::new("/bin/busybox").exists() {
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
        for a in ["sh", "true", "sleep"] {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
        }
        let (mut create, mut start, mut wait, mut exec, mut destroy) =
            (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..n {
            let id = format!("c{i}");
            let spec = ContainerSpec {
                rootfs: RootfsSpec::Path {
                    path: rootfs.display().to_string(),
                    read_only: false,
                },
                mounts: vec![],
                hostname: Some(id.clone()),
                namespaces: protocol::default_namespaces(),
                process: ProcessSpec::new(["sleep", "1000"]),
                cgroup_path: None,
                volume: None,
                limits: Default::default(),
                linux: Default::default(),
                share: None,
            };
            let t = Instant::now();
            c.create_container(&id, spec)?;
            create.push(t.elapsed());
            let t = Instant::now();
            c.start_container(&id)?;
            start.push(t.elapsed());
            let t = Instant::now();
            c.exec(&id, "e", ProcessSpec::new(["true"]))?;
            c.wait(&id, Some("e"))?;
            exec.push(t.elapsed());
            let t = Instant::now();
            c.signal(&id, None, 9, false)?;
            c.wait(&id, None)?;
            wait.push(t.elapsed());
            let t = Instant::now();
            c.destroy_container(&id)?;
            destroy.push(t.elapsed());
        }
        row("CreateContainer", &create);
        row("StartContainer", &start);
        row("Exec `true` + Wait", &exec);
        row("Signal KILL + Wait", &wait);
        row("DestroyContainer", &destroy);
    } else {
        println!("(container rows need root and /bin/busybox)");
    }
    for mut ch in children {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
