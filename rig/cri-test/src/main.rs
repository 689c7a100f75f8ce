//! `ember-cri-test`: drives containerd's CRI plugin the way the kubelet does, over its gRPC
//! socket, for one RuntimeClass handler: a pod sandbox with two containers, execs in both,
//! their status, a container stop, then the sandbox's stop and removal. It prints what it saw,
//! one `LABEL: …` line per fact, for the slow tier to compare between handlers (runc beside
//! ember) — and exits non-zero, naming the step, when a call fails.
//!
//! Usage: `ember-cri-test [--socket PATH] [--handler NAME] [--image REF] [--label LABEL]
//! [--network pod|node]` (defaults: /run/containerd/containerd.sock, the runtime's default
//! handler, docker.io/library/busybox:latest, the handler's name, pod).
//!
//! With `--network pod` (the kubelet's usual pod) containerd's CNI gives the sandbox its
//! network; the test then checks that the containers' `eth0` has the pod's IP, that the host
//! reaches a server in the pod (busybox httpd in c2) and that the pod reaches a server on the
//! host (this process, on [`HOST_PORT`] of the pod's gateway). `--network node` uses the node's
//! namespaces (no CNI, no hostname). Each call has a deadline of [`CALL_SECS`], generous for
//! the virtual KVM host, where a VM boot is emulated.

mod stream;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Deadline of one CRI call.
const CALL_SECS: u64 = 600;
/// The CRI's grace period for stopping a container, in seconds.
const STOP_GRACE_SECS: i64 = 2;
/// Where c2's HTTP server listens in the pod.
const POD_PORT: u16 = 8080;
/// Where this process answers the pod's HTTP request on the host.
const HOST_PORT: u16 = 18081;
/// Bound of one streaming session (exec -it, attach -it).
const STREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// What the host's server answers.
const HOST_BODY: &str = "from-the-host";

struct Args {
    socket: String,
    handler: String,
    image: String,
    label: String,
    pod_network: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        socket: "/run/containerd/containerd.sock".into(),
        handler: String::new(),
        image: "docker.io/library/busybox:latest".into(),
        label: String::new(),
        pod_network: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--network" {
            a.pod_network = match it.next().as_deref() {
                Some("pod") => true,
                Some("node") => false,
                other => return Err(format!("--network pod|node, not {other:?}")),
            };
            continue;
        }
        let slot = match flag.as_str() {
            "--socket" => &mut a.socket,
            "--handler" => &mut a.handler,
            "--image" => &mut a.image,
            "--label" => &mut a.label,
            "-h" | "--help" => {
                return Err("usage: ember-cri-test [--socket PATH] [--handler NAME] \
                            [--image REF] [--label LABEL] [--network pod|node]"
                    .into())
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        };
        *slot = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
    }
    if a.label.is_empty() {
        a.label = if a.handler.is_empty() {
            "default".into()
        } else {
            a.handler.clone()
        };
    }
    Ok(a)
}

/// A failed step: which one, and what the runtime said.
struct Failure {
    step: String,
    why: String,
}

/// Runs one CRI call under [`CALL_SECS`]; a failure names `step`.
async fn call<T, F>(step: &str, fut: F) -> Result<T, Failure>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(Duration::from_secs(CALL_SECS), fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(Failure {
            step: step.into(),
            why: format!("{:?}: {}", status.code(), status.message()),
        }),
        Err(_) => Err(Failure {
            step: step.into(),
            why: format!("no answer in {CALL_SECS} s"),
        }),
    }
}

fn check(step: &str, ok: bool, why: impl FnOnce() -> String) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(Failure {
            step: step.into(),
            why: why(),
        })
    }
}

async fn connect(socket: &str) -> Result<Channel, Failure> {
    let path = socket.to_string();
    // The URI is not used: every connection is the Unix socket.
    let endpoint = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(10));
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| Failure {
            step: "connect".into(),
            why: format!("{socket}: {e}"),
        })
}

struct Test {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    args: Args,
    sandbox_config: cri::PodSandboxConfig,
    sandbox_id: Option<String>,
}

impl Test {
    fn say(&self, what: impl AsRef<str>) {
        println!("{}: {}", self.args.label, what.as_ref());
    }

    async fn exec(
        &mut self,
        container: &str,
        cmd: &[&str],
    ) -> Result<cri::ExecSyncResponse, Failure> {
        let req = cri::ExecSyncRequest {
            container_id: container.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: CALL_SECS as i64,
        };
        call(
            &format!("ExecSync {}", cmd.join(" ")),
            self.rt.exec_sync(req),
        )
        .await
    }

    async fn container_state(&mut self, id: &str) -> Result<cri::ContainerStatus, Failure> {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        let resp = call("ContainerStatus", self.rt.container_status(req)).await?;
        resp.status.ok_or_else(|| Failure {
            step: "ContainerStatus".into(),
            why: "no status in the answer".into(),
        })
    }

    /// Creates container `name` running `command`; `interactive`: with stdin and a terminal
    /// (`kubectl run -it`).
    async fn create_container(
        &mut self,
        name: &str,
        command: &[&str],
        interactive: bool,
    ) -> Result<String, Failure> {
        let sandbox = self.sandbox_id.clone().unwrap_or_default();
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox,
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: self.args.image.clone(),
                    ..Default::default()
                }),
                command: command.iter().map(|s| s.to_string()).collect(),
                stdin: interactive,
                tty: interactive,
                ..Default::default()
            }),
            sandbox_config: Some(self.sandbox_config.clone()),
        };
        let resp = call(
            &format!("CreateContainer {name}"),
            self.rt.create_container(req),
        )
        .await?;
        Ok(resp.container_id)
    }

    async fn run(&mut self) -> Result<(), Failure> {
        let t0 = Instant::now();
        let v = call(
            "Version",
            self.rt.version(cri::VersionRequest {
                version: "v1".into(),
            }),
        )
        .await?;
        self.say(format!(
            "runtime {} {} (CRI {})",
            v.runtime_name, v.runtime_version, v.runtime_api_version
        ));
        let image = call(
            "ImageStatus",
            self.img.image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: self.args.image.clone(),
                    ..Default::default()
                }),
                verbose: false,
            }),
        )
        .await?;
        check("ImageStatus", image.image.is_some(), || {
            format!(
                "{} is not in containerd's k8s.io namespace",
                self.args.image
            )
        })?;

        let resp = call(
            "RunPodSandbox",
            self.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(self.sandbox_config.clone()),
                runtime_handler: self.args.handler.clone(),
            }),
        )
        .await?;
        self.sandbox_id = Some(resp.pod_sandbox_id.clone());
        let status = call(
            "PodSandboxStatus",
            self.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: resp.pod_sandbox_id.clone(),
                verbose: false,
            }),
        )
        .await?;
        let state = status.status.as_ref().map(|s| s.state).unwrap_or(-1);
        self.say(format!("sandbox {}", state_name_sandbox(state)));
        let pod_ip = status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        let t_sandbox = t0.elapsed();

        let port = POD_PORT.to_string();
        let mut ids = Vec::new();
        for (name, command) in [
            ("c1", vec!["sleep", "1000"]),
            ("c2", vec!["httpd", "-f", "-p", &port, "-h", "/etc"]),
        ] {
            let id = self.create_container(name, &command, false).await?;
            call(
                &format!("StartContainer {name}"),
                self.rt.start_container(cri::StartContainerRequest {
                    container_id: id.clone(),
                }),
            )
            .await?;
            let st = self.container_state(&id).await?;
            self.say(format!("{name} {}", state_name(st.state)));
            ids.push(id);
        }
        let t_containers = t0.elapsed();

        let mut boot_ids = Vec::new();
        for (name, id) in ["c1", "c2"].iter().zip(&ids) {
            let r = self
                .exec(id, &["cat", "/proc/sys/kernel/random/boot_id"])
                .await?;
            check("ExecSync boot_id", r.exit_code == 0, || {
                format!(
                    "exit {}: {}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stderr)
                )
            })?;
            let boot = String::from_utf8_lossy(&r.stdout).trim().to_string();
            self.say(format!("{name} boot_id {boot}"));
            boot_ids.push(boot);
        }
        // New limits in place (the kubelet's UpdateContainerResources): c1's cgroup has them.
        call(
            "UpdateContainerResources",
            self.rt
                .update_container_resources(cri::UpdateContainerResourcesRequest {
                    container_id: ids[0].clone(),
                    linux: Some(cri::LinuxContainerResources {
                        memory_limit_in_bytes: 64 << 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
        )
        .await?;
        let script = "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max";
        let r = self.exec(&ids[0], &["sh", "-c", script]).await?;
        self.say(format!(
            "c1 memory.max after UpdateContainerResources: {}",
            String::from_utf8_lossy(&r.stdout).trim()
        ));
        let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_string();
        self.say(format!(
            "c1 and c2 share one kernel: {}",
            yes(boot_ids[0] == boot_ids[1])
        ));
        self.say(format!(
            "containers run on the host's kernel: {}",
            yes(boot_ids[0] == host_boot)
        ));

        // Where the pod's VM runs on this host: in the pod's shim (ember's shim v2 hosts it,
        // no pod process of its own), or nowhere (runc).
        let (own, in_shims) = vm_hosts();
        self.say(format!("pod processes of their own: {own}"));
        self.say(format!("shims running a vCPU: {in_shims}"));

        if self.args.pod_network {
            self.network_checks(&ids, &pod_ip).await?;
        }

        let r = self
            .exec(
                &ids[1],
                &["sh", "-c", "echo out-ok; echo err-ok >&2; exit 3"],
            )
            .await?;
        self.say(format!(
            "exec stdout={} stderr={} exit={}",
            String::from_utf8_lossy(&r.stdout).trim(),
            String::from_utf8_lossy(&r.stderr).trim(),
            r.exit_code
        ));

        self.interactive(&ids[1]).await?;

        // What the kubelet reads for its summary: CPU time and working set (the runtime's
        // task metrics, through containerd).
        let stats = call(
            "ContainerStats c2",
            self.rt.container_stats(cri::ContainerStatsRequest {
                container_id: ids[1].clone(),
            }),
        )
        .await?
        .stats
        .unwrap_or_default();
        let cpu = stats
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value);
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map_or(0, |v| v.value);
        self.say(format!(
            "c2 stats: cpu counted {}, working set counted {}",
            yes(cpu > 0),
            yes(memory > 0)
        ));

        call(
            "StopContainer c1",
            self.rt.stop_container(cri::StopContainerRequest {
                container_id: ids[0].clone(),
                timeout: STOP_GRACE_SECS,
            }),
        )
        .await?;
        let st = self.container_state(&ids[0]).await?;
        self.say(format!(
            "c1 after stop: {} exit={}",
            state_name(st.state),
            st.exit_code
        ));
        let r = self.exec(&ids[1], &["echo", "c2-still-answers"]).await?;
        self.say(format!(
            "c2 after c1 stopped: {}",
            String::from_utf8_lossy(&r.stdout).trim()
        ));

        let t1 = Instant::now();
        let sandbox = self.sandbox_id.clone().unwrap_or_default();
        self.teardown(&sandbox).await?;
        self.sandbox_id = None;
        let left = call(
            "ListPodSandbox",
            self.rt.list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    id: sandbox.clone(),
                    ..Default::default()
                }),
            }),
        )
        .await?;
        let containers = call(
            "ListContainers",
            self.rt.list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: sandbox,
                    ..Default::default()
                }),
            }),
        )
        .await?;
        self.say(format!(
            "after RemovePodSandbox: {} sandboxes, {} containers",
            left.items.len(),
            containers.containers.len()
        ));
        self.say(format!(
            "phases run_sandbox_s={:.2} create_start_2_s={:.2} stop_remove_s={:.2}",
            t_sandbox.as_secs_f64(),
            (t_containers - t_sandbox).as_secs_f64(),
            t1.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// `kubectl exec -it` in container `exec_in`, then `kubectl attach -it` to a third
    /// container whose process is an interactive shell: containerd's streaming server, the
    /// runtime's terminal (its size set by the client) and stdin.
    async fn interactive(&mut self, exec_in: &str) -> Result<(), Failure> {
        let resp = call(
            "Exec -it",
            self.rt.exec(cri::ExecRequest {
                container_id: exec_in.to_string(),
                cmd: vec!["sh".into()],
                tty: true,
                stdin: true,
                stdout: true,
                stderr: false,
            }),
        )
        .await?;
        // The terminal echoes what is typed: the marker is computed, so only the output has
        // "RESULT-42". The size arrives beside the input, so the shell waits for it.
        let script = "i=0; while [ \"$(stty size)\" != \"30 100\" ] && [ $i -lt 100 ]; \
                      do sleep 0.1; i=$((i+1)); done; \
                      echo \"RESULT-$((6*7)) size=$(stty size | tr ' ' x) \
                      terminal=$([ -t 0 ] && echo yes) $(tty | cut -c1-9)\"; exit 5\n";
        let seen = stream::session(&resp.url, (30, 100), script, |_| false, STREAM_TIMEOUT)
            .await
            .map_err(|why| Failure {
                step: "Exec -it stream".into(),
                why,
            })?;
        self.say(format!(
            "exec -it: {} exit={}",
            marked_line(&seen.output, "RESULT-42"),
            seen.exit.map_or("none".into(), |c| c.to_string())
        ));

        let id = self.create_container("c3", &["sh"], true).await?;
        call(
            "StartContainer c3",
            self.rt.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }),
        )
        .await?;
        let resp = call(
            "Attach c3",
            self.rt.attach(cri::AttachRequest {
                container_id: id.clone(),
                stdin: true,
                tty: true,
                stdout: true,
                stderr: false,
            }),
        )
        .await?;
        let line_of = |o: &str| o.find("ATTACH-42").is_some_and(|at| o[at..].contains('\n'));
        let seen = stream::session(
            &resp.url,
            (30, 100),
            "echo ATTACH-$((6*7)) terminal=$([ -t 0 ] && echo yes)\n",
            line_of,
            STREAM_TIMEOUT,
        )
        .await
        .map_err(|why| Failure {
            step: "Attach c3 stream".into(),
            why,
        })?;
        self.say(format!(
            "attach -it: {}",
            marked_line(&seen.output, "ATTACH-42")
        ));
        let st = self.container_state(&id).await?;
        self.say(format!("c3 after detach: {}", state_name(st.state)));
        Ok(())
    }

    /// The pod's network as the kubelet's users see it: the pod IP on `eth0`, the sandbox's
    /// hostname, host -> pod and pod -> host TCP.
    async fn network_checks(&mut self, ids: &[String], pod_ip: &str) -> Result<(), Failure> {
        check("PodSandboxStatus", !pod_ip.is_empty(), || {
            "the sandbox has no IP (is containerd's CNI configured?)".into()
        })?;
        let r = self
            .exec(&ids[0], &["ip", "-4", "-o", "addr", "show", "eth0"])
            .await?;
        let addr = String::from_utf8_lossy(&r.stdout).to_string();
        self.say(format!(
            "c1 eth0 has the pod's IP: {}",
            yes(addr.contains(&format!("inet {pod_ip}/")))
        ));
        let r = self.exec(&ids[0], &["hostname"]).await?;
        let hostname = String::from_utf8_lossy(&r.stdout).trim().to_string();
        if hostname == self.sandbox_config.hostname {
            self.say("hostname is the sandbox's: yes");
        } else {
            self.say(format!("hostname is the sandbox's: no ({hostname:?})"));
        }
        // A CRI pod's containers share the sandbox's UTS and IPC namespaces.
        let mut seen = Vec::new();
        for id in ids {
            let r = self
                .exec(
                    id,
                    &[
                        "sh",
                        "-c",
                        "readlink /proc/self/ns/uts; readlink /proc/self/ns/ipc",
                    ],
                )
                .await?;
            seen.push(String::from_utf8_lossy(&r.stdout).to_string());
        }
        self.say(format!(
            "c1 and c2 share uts and ipc namespaces: {}",
            yes(!seen[0].trim().is_empty() && seen[0] == seen[1])
        ));
        // host -> pod: c2's httpd serves the container's /etc.
        let body = http_get(pod_ip, POD_PORT, "/hostname").await;
        self.say(format!("host -> c2 http: {}", body.trim()));
        // pod -> host: this process answers on the pod's gateway.
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", HOST_PORT))
            .await
            .map_err(|e| Failure {
                step: "listen on the host".into(),
                why: e.to_string(),
            })?;
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{HOST_BODY}",
                    HOST_BODY.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        // No `-T`: busybox 1.35's wget crashes with it (SIGSEGV); the exec's deadline bounds it.
        let fetch =
            format!("wget -q -O - http://$(ip route | awk '/^default/ {{print $3}}'):{HOST_PORT}/");
        let r = self.exec(&ids[0], &["sh", "-c", &fetch]).await;
        server.abort();
        let r = r?;
        let body = String::from_utf8_lossy(&r.stdout).trim().to_string();
        if r.exit_code == 0 {
            self.say(format!("c1 -> host http: {body}"));
        } else {
            self.say(format!(
                "c1 -> host http: failed (exit {}: {})",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr).trim()
            ));
        }
        Ok(())
    }

    async fn teardown(&mut self, sandbox: &str) -> Result<(), Failure> {
        call(
            "StopPodSandbox",
            self.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sandbox.to_string(),
            }),
        )
        .await?;
        call(
            "RemovePodSandbox",
            self.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: sandbox.to_string(),
            }),
        )
        .await?;
        Ok(())
    }
}

/// `GET path` from `ip:port` over HTTP/1.0, retried for up to 60 s while the server starts; its
/// body, or what went wrong.
async fn http_get(ip: &str, port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = async {
            let mut conn = tokio::net::TcpStream::connect((ip, port)).await?;
            conn.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .await?;
            let mut resp = Vec::new();
            conn.read_to_end(&mut resp).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&resp).to_string())
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(resp)) => {
                return match resp.split_once("\r\n\r\n") {
                    Some((_, body)) => body.to_string(),
                    None => format!("no HTTP answer: {resp:?}"),
                }
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    format!("failed: {last}")
}

/// The line of a terminal's `output` that starts with `marker` (without the `\r`), or what
/// the output was when none does.
fn marked_line(output: &str, marker: &str) -> String {
    output
        .split(['\r', '\n'])
        .find(|l| l.starts_with(marker))
        .map_or_else(|| format!("no {marker} line in {output:?}"), str::to_string)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn state_name(state: i32) -> &'static str {
    cri::ContainerState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN_STATE")
}

fn state_name_sandbox(state: i32) -> &'static str {
    cri::PodSandboxState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN_STATE")
}

/// ember's VM hosts on this host: processes that are a pod process of their own (`ember pod
/// __vmm`), and ember shim v2 servers (`EMBER_SHIM_V2=1`) with a `vcpu0` thread.
fn vm_hosts() -> (usize, usize) {
    let (mut own, mut in_shims) = (0, 0);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = e.path();
        let cmdline = std::fs::read(p.join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("__vmm") {
            own += 1;
            continue;
        }
        let environ = std::fs::read(p.join("environ")).unwrap_or_default();
        if !environ.split(|b| *b == 0).any(|v| v == b"EMBER_SHIM_V2=1") {
            continue;
        }
        let vcpu = std::fs::read_dir(p.join("task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "vcpu0")
            });
        if vcpu {
            in_shims += 1;
        }
    }
    (own, in_shims)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ember-cri-test: {e}");
            return ExitCode::from(2);
        }
    };
    let channel = match connect(&args.socket).await {
        Ok(c) => c,
        Err(f) => {
            eprintln!("ember-cri-test: {}: {}", f.step, f.why);
            return ExitCode::FAILURE;
        }
    };
    let name = format!("cri-{}", args.label);
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: "ember-test".into(),
            attempt: 0,
        }),
        // The node's UTS namespace has the node's name (runc refuses to set one there).
        hostname: if args.pod_network {
            name
        } else {
            String::new()
        },
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: if args.pod_network {
                        cri::NamespaceMode::Pod
                    } else {
                        cri::NamespaceMode::Node
                    } as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut test = Test {
        rt: RuntimeServiceClient::new(channel.clone()),
        img: ImageServiceClient::new(channel),
        args,
        sandbox_config,
        sandbox_id: None,
    };
    match test.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            println!("{}: FAILED at {}: {}", test.args.label, f.step, f.why);
            // Leave nothing behind for the next check.
            if let Some(sandbox) = test.sandbox_id.clone() {
                if let Err(c) = test.teardown(&sandbox).await {
                    println!(
                        "{}: cleanup also failed at {}: {}",
                        test.args.label, c.step, c.why
                    );
                }
            }
            ExitCode::FAILURE
        }
    }
}
