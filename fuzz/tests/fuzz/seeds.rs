//! The seed corpus: well-formed inputs for each target, written by
//! `cargo test -p ember-fuzz --test fuzz write_seed_corpus -- --ignored` into
//! `fuzz/corpus/<target>/seed-*` (committed; regressions sit beside them as `crash-*`).

use std::path::Path;

use agent::protocol::{
    self, AgentError, ContainerSpec, ErrorKind, ExitStatus, Hello, PingInfo, ProcessSpec, Request,
    RequestFrame, Response, ResponseFrame, StdioStream, PROTOCOL_VERSION,
};
use runtime::config::{ContainerConfig, PodConfig, RootfsConfig};

use crate::virtio_fs::*;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = fuzz::corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn le32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le64(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn fs_seeds() {
    let mut init = le32(&[7, 38, 128 * 1024, 0xffff_ffff]);
    init.resize(64, 0);
    let read_in = |size: u32| {
        cat(&[
            &le64(&[0, 0]),
            &le32(&[size, 0]),
            &le64(&[0]),
            &le32(&[0, 0]),
        ])
    };
    let write_in = |data: &[u8]| {
        cat(&[
            &le64(&[0, 0]),
            &le32(&[data.len() as u32, 0]),
            &le64(&[0]),
            &le32(&[0, 0]),
            data,
        ])
    };
    // Node selectors: 0 = root, 1 = vol (after LOOKUP vol), 2.. = later entries.
    // fix: 1 = patch fh (index fix >> 4), 2 = patch node (index fix >> 4), 8 = WRITE size.
    let basic = seed(&[
        (INIT, 0, init.clone(), 0),
        (LOOKUP, 0, b"vol\0".to_vec(), 0),
        (GETATTR, 1, vec![0; 16], 0),
        (LOOKUP, 1, b"f\0".to_vec(), 0),
        (OPEN, 2, le32(&[2, 0]), 0),
        (READ, 2, read_in(4096), 1),
        (WRITE, 2, write_in(b"fuzz"), 1 | 8),
        (LSEEK, 2, cat(&[&le64(&[0, 0]), &le32(&[4, 0])]), 1),
        (
            FALLOCATE,
            2,
            cat(&[&le64(&[0, 0, 4096]), &le32(&[0, 0])]),
            1,
        ),
        (FSYNC, 2, cat(&[&le64(&[0]), &le32(&[1, 0])]), 1),
        (
            FLUSH,
            2,
            cat(&[&le64(&[0]), &le32(&[0, 0]), &le64(&[0])]),
            1,
        ),
        (
            RELEASE,
            2,
            cat(&[&le64(&[0]), &le32(&[0, 0]), &le64(&[0])]),
            1,
        ),
        (STATFS, 1, vec![], 0),
        (FORGET, 2, le64(&[1]), 0),
    ]);
    write("virtio_fs", "read-write", &basic);
    let dirs = seed(&[
        (INIT, 0, init.clone(), 0),
        (LOOKUP, 0, b"vol\0".to_vec(), 0),
        (OPENDIR, 1, le32(&[0, 0]), 0),
        (READDIRPLUS, 1, read_in(4096), 1),
        (READDIR, 1, read_in(4096), 1),
        (
            RELEASEDIR,
            1,
            cat(&[&le64(&[0]), &le32(&[0, 0]), &le64(&[0])]),
            1,
        ),
        (MKDIR, 1, cat(&[&le32(&[0o755, 0]), b"x\0"]), 0),
        (
            CREATE,
            1,
            cat(&[&le32(&[0o102, 0o100644, 0, 0]), b"n\0"]),
            0,
        ),
        (SYMLINK, 1, b"s\0f\0".to_vec(), 0),
        (LINK, 1, cat(&[&le64(&[0]), b"h\0"]), 2 | (3 << 4)),
        (RENAME, 1, cat(&[&le64(&[0]), b"n\0m\0"]), 2 | (1 << 4)),
        (
            RENAME2,
            1,
            cat(&[&le64(&[0]), &le32(&[1, 0]), b"m\0s\0"]),
            2 | (1 << 4),
        ),
        (MKNOD, 1, cat(&[&le32(&[0o10644, 0, 0, 0]), b"q\0"]), 0),
        (UNLINK, 1, b"s\0".to_vec(), 0),
        (RMDIR, 1, b"x\0".to_vec(), 0),
        (
            BATCH_FORGET,
            0,
            cat(&[&le32(&[2, 0]), &le64(&[2, 1, 3, 1])]),
            0,
        ),
    ]);
    write("virtio_fs", "directories", &dirs);
    let attrs = seed(&[
        (INIT, 0, init.clone(), 0),
        (LOOKUP, 0, b"vol\0".to_vec(), 0),
        (LOOKUP, 1, b"l\0".to_vec(), 0),
        (READLINK, 2, vec![], 0),
        (LOOKUP, 1, b"esc\0".to_vec(), 0),
        (READLINK, 3, vec![], 0),
        (LOOKUP, 1, b"d\0".to_vec(), 0),
        (LOOKUP, 4, b"g\0".to_vec(), 0),
        (
            SETATTR,
            5,
            cat(&[
                &le32(&[1 | 8, 0]),
                &le64(&[0, 100, 0, 0, 0, 0]),
                &le32(&[0, 0, 0, 0o100600, 0, 0, 0, 0]),
            ]),
            0,
        ),
        (SETXATTR, 5, cat(&[&le32(&[1, 0]), b"user.a\0v"]), 0),
        (GETXATTR, 5, cat(&[&le32(&[64, 0]), b"user.a\0"]), 0),
        (LISTXATTR, 5, le32(&[0, 0]), 0),
        (REMOVEXATTR, 5, b"user.a\0".to_vec(), 0),
        (ACCESS, 5, le32(&[4, 0]), 0),
        (OPEN, 5, le32(&[0, 0]), 0),
        (
            COPY_FILE_RANGE,
            5,
            le64(&[0, 0, 0, 0, 10, 100, 0]),
            1 | 4 | (5 << 5),
        ),
        (
            GETLK,
            5,
            cat(&[&le64(&[0, 1, 0, 10]), &le32(&[1, 42, 0, 0])]),
            1,
        ),
        (
            SETLK,
            5,
            cat(&[&le64(&[0, 1, 0, 10]), &le32(&[1, 42, 1, 0])]),
            1,
        ),
        (DESTROY, 0, vec![], 0),
    ]);
    write("virtio_fs", "attributes", &attrs);
}

fn virtio_seeds() {
    // virtio_block: rw disk; IN of 2 sectors into two buffers; OUT; FLUSH; GET_ID; raw.
    let addr = |a: u16| cat(&[&[2u8], &a.to_le_bytes()]);
    let data = |a: u16, k: u8, dir: u8| cat(&[&addr(a), &[2, k], &[dir]]);
    let blk = cat(&[
        &[1],
        &[0, 0, 1, 2],
        &cat(&[&[2], &data(0x100, 0, 1), &data(0x200, 1, 1), &[0]]),
        &[0, 2, 1, 4],
        &cat(&[&[1], &data(0x400, 0, 1), &[0]]),
        &[0, 4, 1, 0, 0, 0],
        &cat(&[&[0, 5, 1, 0, 1], &addr(0x600), &[3, 20, 0, 1, 0]]),
        &[0, 7, 1, 0, 0, 0, 11],
        &[7, 3, 0, 0, 0, 0],
    ]);
    write("virtio_block", "requests", &blk);
    // virtio_rng: two chains, one indirect.
    let rng = cat(&[
        &[0, 2],
        &addr(0x100),
        &[3, 0x40, 0x00, 1],
        &addr(0x300),
        &[3, 0x10, 0x00, 1],
        &[0],
        &[0, 1],
        &addr(0x500),
        &[3, 0x00, 0x01, 1],
        &[11],
    ]);
    write("virtio_rng", "requests", &rng);
    // virtio_net: rx buffer, a frame, a tx frame.
    let net = cat(&[
        &[2, 1],
        &addr(0x100),
        &[3, 0x00, 0x08, 1],
        &[0],
        &[0, 2, 0x00, 0x01, 0x42],
        &[4, 2],
        &addr(0x1000),
        &[3, 12, 0, 1],
        &addr(0x1100),
        &[3, 0x40, 0, 1],
        &[0x33, 0],
    ]);
    write("virtio_net", "rx-tx", &net);
    // virtio_vsock: rx buffers, REQUEST to the listening port, a tick, data both ways.
    // Two writable buffers: a header and 4 KiB.
    let rxbuf = cat(&[
        &[3, 2],
        &addr(0x100),
        &[1, 1],
        &addr(0x200),
        &[0],
        &[3, 0x00, 0x10],
        &[1, 0],
    ]);
    let pkt = |op: u8, len: u16| {
        cat(&[
            &[0],
            &len.to_le_bytes(),
            &[0, 1, 2, op - 1, 0, 2],
            &[0x11],
            &[0, 0, 1],
            &[0],
        ])
    };
    let vsock = cat(&[
        &rxbuf,
        &rxbuf,
        &pkt(1, 0),
        &[5],
        &[7, 0, 0, 0x00, 0x01],
        &[5],
        &pkt(5, 64),
        &[5],
        &rxbuf,
        &pkt(4, 0),
        &[6, 1, 0xd2, 0x04],
        &[5],
        &pkt(3, 0),
    ]);
    write("virtio_vsock", "connection", &vsock);
    // mmio: the driver's init sequence, then a notify and config reads.
    let wr = |off: u16, v: u64| cat(&[&[0u8], &off.to_le_bytes(), &v.to_le_bytes()]);
    let rd = |off: u16| cat(&[&[0x80u8], &off.to_le_bytes()]);
    let init = |dev: u8| {
        cat(&[
            &[dev],
            &rd(0x00),
            &rd(0x10),
            &wr(0x70, 1),
            &wr(0x70, 3),
            &wr(0x14, 1),
            &rd(0x10),
            &wr(0x24, 1),
            &wr(0x20, 1),
            &wr(0x24, 0),
            &wr(0x20, 0x1000_0000),
            &wr(0x70, 0xb),
            &rd(0x70),
            &wr(0x30, 0),
            &rd(0x34),
            &wr(0x38, 16),
            &wr(0x80, 0),
            &wr(0x90, 0x100),
            &wr(0xa0, 0x2000),
            &wr(0x44, 1),
            &wr(0x70, 0xf),
            &[0x38, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &rd(0x60),
            &wr(0x64, 1),
            &rd(0x100),
            &rd(0xfc),
            &wr(0x70, 0),
        ])
    };
    write("mmio", "rng-init", &init(0));
    write("mmio", "block-init", &init(1));
}

fn frames(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![7, 0]; // big reads, no EINTR
    for f in frames {
        protocol::write_frame(&mut v, f).unwrap();
    }
    v
}

fn agent_seeds() {
    let req = |id: u64, request: Request| {
        serde_json::to_vec(&RequestFrame {
            version: PROTOCOL_VERSION,
            id,
            request,
        })
        .unwrap()
    };
    let spec: ContainerSpec = serde_json::from_value(serde_json::json!({
        "rootfs": {"BlockDevice": {"path": "/dev/vdb", "fstype": "ext4"}},
        "process": ProcessSpec::new(["sh"]),
        "mounts": [],
        "limits": {"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "b", "access": "m"},
        ]},
    }))
    .unwrap();
    let reqs = frames(&[
        req(1, Request::Ping),
        req(
            2,
            Request::CreateContainer {
                id: "c".into(),
                spec: Box::new(spec),
            },
        ),
        req(
            3,
            Request::Exec {
                container_id: "c".into(),
                exec_id: "e".into(),
                process: ProcessSpec::new(["sh", "-c", "true"]),
            },
        ),
        req(
            4,
            Request::Wait {
                container_id: "c".into(),
                exec_id: None,
            },
        ),
        req(
            5,
            Request::AttachStdio {
                container_id: "c".into(),
                exec_id: Some("e".into()),
                stream: StdioStream::Stdin,
            },
        ),
        b"{\"version\":2,\"id\":6,\"request\":\"Ping\"}".to_vec(),
        b"{\"id\":7}".to_vec(),
        b"not json".to_vec(),
    ]);
    write("agent_request", "session", &reqs);
    let resp = |id: u64, result: Result<Response, AgentError>| {
        serde_json::to_vec(&ResponseFrame { id, result }).unwrap()
    };
    // Selectors: byte 0 picks client calls (>= 2), bytes 1..3 the calls.
    let mut r = vec![2, 0, 2, 4];
    r.extend(frames(&[
        resp(
            1,
            Ok(Response::Pong(PingInfo {
                version: 1,
                agent_version: "0.1.0".into(),
                uptime_ms: 5,
            })),
        ),
        resp(
            2,
            Ok(Response::Exit(ExitStatus {
                code: 137,
                signal: Some(9),
            })),
        ),
        resp(3, Err(AgentError::new(ErrorKind::BadRequest, "no"))),
    ]));
    write("agent_response", "calls", &r);
    let hello = serde_json::to_vec(&Hello {
        version: 1,
        agent_version: "0.1.0".into(),
        pid: 1,
        listen: "vsock:1024".into(),
        uptime_ms: 100,
    })
    .unwrap();
    let mut h = vec![0, 0, 0, 0];
    h.extend(frames(&[hello]));
    write("agent_response", "hello", &h);
    write(
        "agent_response",
        "handshake",
        &[1, 0, 0, 0, 7, 0, b'O', b'K', b' ', b'9', b'\n'],
    );
}

fn config_seeds() {
    let oci = r#"{"ociVersion":"1.0.2","process":{"terminal":false,"user":{"uid":0,"gid":0},"args":["sh"],"env":["PATH=/bin"],"cwd":"/","capabilities":{"bounding":["CAP_KILL"]},"rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}]},"root":{"path":"rootfs","readonly":true},"hostname":"h","mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/data","type":"bind","source":"/tmp","options":["rbind","ro"]}],"hooks":{"prestart":[{"path":"/bin/true","timeout":5}]},"annotations":{"io.kubernetes.cri.container-type":"container"},"linux":{"namespaces":[{"type":"pid"},{"type":"uts"},{"type":"mount"}],"resources":{"memory":{"limit":536870912,"swap":1073741824},"cpu":{"quota":150000,"period":100000,"cpus":"0-3","shares":1024},"pids":{"limit":100}},"sysctl":{"net.ipv4.ip_forward":"1"},"devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229}],"maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"],"cgroupsPath":"/ember/c"}}"#;
    write("oci_config", "full", oci.as_bytes());
    write("oci_config", "minimal", br#"{"ociVersion":"1.0.0","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#);
    let pod = serde_json::to_vec(&PodConfig::default()).unwrap();
    write("pod_config", "pod-default", &pod);
    let c = ContainerConfig::new(
        RootfsConfig::Share {
            path: "/tmp".into(),
            read_only: true,
        },
        ["sh", "-c", "echo"],
    );
    write("pod_config", "container", &serde_json::to_vec(&c).unwrap());
    let rt = "[hypervisor]\nkernel = \"/k\"\ninitrd = \"/i\"\ndefault_memory_mib = 512\ndefault_vcpus = 2\nmemory_overhead_mib = 64\nmax_memory_mib = 4096\nmax_vcpus = 4\nextra_cmdline = [\"ember.debug\"]\n[runtime]\nrootfs = \"block\"\ndebug = true\n";
    let mut rtb = rt.as_bytes().to_vec();
    rtb.extend_from_slice(&[
        0, 0, 0, 0x20, 0, 0, 0, 0, 0xf0, 0x49, 0x02, 0, 0, 0, 0, 0, 0xa0, 0x86, 1, 0, 0, 0, 0, 0,
        0, 3, 0xff, 0xff, 0xff, 0xff, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    write("runtime_config", "full", &rtb);
}

fn snapshot_seeds() {
    for (name, data) in crate::snapshot::seeds() {
        write("device_restore", name, &data);
    }
    let state = serde_json::to_vec(&crate::snapshot::seed_state()).unwrap();
    write(
        "snapshot_state",
        "framed",
        &[&[1u8][..], &state[..]].concat(),
    );
    write(
        "snapshot_state",
        "raw",
        &[&[0u8][..], &vmm::persist::frame_state(&state)[..]].concat(),
    );
}

#[test]
#[ignore = "writes the seed corpus into the source tree"]
fn write_seed_corpus() {
    fs_seeds();
    virtio_seeds();
    agent_seeds();
    config_seeds();
    snapshot_seeds();
    assert!(Path::new(&fuzz::corpus_dir("virtio_fs")).is_dir());
}
