//! The container's filesystem where engines look for it: the mount namespace of the pid that
//! `state` reports.
//!
//! Under runc that pid is the container's own process, and engines use its namespaces to
//! reach the container's files: `podman cp` into or out of a running container joins
//! `/proc/PID/ns/mnt` and copies at the path the container sees, `podman top` reads the
//! `/proc` it finds there. ember's pid is its shim, a host process: in the host's mount
//! namespace `podman cp file ctr:/etc/passwd` would write the *host's* `/etc/passwd`, and
//! `podman top` lists every host process.
//!
//! So once the container runs, the shim's main thread (the thread-group leader, whose
//! namespaces `/proc/PID/ns/*` name) enters a mount namespace of its own whose root is the
//! container's view as far as the host holds it: the bundle's rootfs (which the guest shares
//! live, by virtio-fs) with the spec's bind mounts on it at their destinations and their
//! `ro`, the root read-only where the spec says so — `pivot_root`, the host's root detached.
//! Its `/proc` is the rootfs's empty directory, so `podman top` lists nothing rather than
//! the host (the processes are in the guest: `ember ps`). The shim's work goes on in threads
//! started before, which keep the host's view.

use super::bundle::{ContainerConfig, MountConfig};
use crate::pod_vmm::jail::{self, Error};
use std::path::{Path, PathBuf};

/// A bind of the view: a host path at a path under the rootfs.
#[derive(Debug, PartialEq, Eq)]
struct Bind {
    source: PathBuf,
    target: PathBuf,
    read_only: bool,
}

/// The spec's bind mounts whose destination exists under `rootfs`, resolved there as the
/// guest resolves it ([`agent::mounts::in_root`]: a symlink cannot lead out; nothing is
/// created). Others (tmpfs, proc, …) exist only in the guest.
fn binds(rootfs: &Path, mounts: &[MountConfig]) -> Vec<Bind> {
    let Ok(root) = rootfs.canonicalize() else {
        return Vec::new();
    };
    mounts
        .iter()
        .filter(|m| {
            m.typ.as_deref() == Some("bind")
                || m.options.iter().any(|o| o == "bind" || o == "rbind")
        })
        .filter_map(|m| {
            let source = m.source.as_ref().filter(|s| s.is_absolute())?;
            let target = agent::mounts::in_root(&root, m.destination.to_str()?).ok()?;
            target.exists().then(|| Bind {
                source: source.clone(),
                target,
                read_only: m.options.iter().any(|o| o == "ro"),
            })
        })
        .collect()
}

/// Puts the calling thread (to be the shim's main thread, with the shim's work on threads
/// started before) into the view of the container `config` describes. Only this thread
/// changes.
pub fn enter(config: &ContainerConfig) -> Result<(), Error> {
    enter_view(&config.rootfs, &config.mounts, config.readonly_rootfs)
}

fn enter_view(root: &Path, mounts: &[MountConfig], readonly: bool) -> Result<(), Error> {
    let binds = binds(root, mounts);
    jail::private_namespace()?;
    jail::mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC, None)?;
    for b in &binds {
        jail::mount(
            Some(&b.source),
            &b.target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        if b.read_only {
            remount_read_only(&b.target)?;
        }
    }
    // No initramfs fallback: a chroot would not confine a process that joins the namespace.
    jail::pivot_into(root, false)?;
    if readonly {
        remount_read_only(Path::new("/"))?;
    }
    Ok(())
}

fn remount_read_only(target: &Path) -> Result<(), Error> {
    jail::mount(
        None,
        target,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn bind(dest: &str, source: &Path, opts: &[&str]) -> MountConfig {
        MountConfig {
            destination: dest.into(),
            typ: Some("bind".into()),
            source: Some(source.to_path_buf()),
            options: opts.iter().map(|o| o.to_string()).collect(),
        }
    }

    /// A process that joins the view's namespace, as `podman cp` does (setns of
    /// `/proc/PID/ns/mnt`), finds the container's rootfs at "/", its volumes at their
    /// destinations (`ro` kept), and none of the host's files.
    #[test]
    fn a_joiner_of_the_view_sees_the_container_not_the_host() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping a_joiner_of_the_view_sees_the_container_not_the_host: needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("ember-view-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let rootfs = base.join("rootfs");
        for d in ["tmp", "data", "conf", "proc"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::write(rootfs.join("marker"), b"rootfs").unwrap();
        let (vol, conf, outside) = (base.join("vol"), base.join("conf"), base.join("outside"));
        for d in [&vol, &conf, &outside] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(conf.join("setting"), b"ro").unwrap();
        // A destination through a symlink that leads out of the rootfs is not bound.
        symlink(&outside, rootfs.join("escape")).unwrap();
        let mounts = vec![
            bind("/data", &vol, &["rbind", "rw"]),
            bind("/conf", &conf, &["rbind", "ro"]),
            bind("/escape", &vol, &["rbind"]),
            MountConfig {
                destination: "/tmp".into(),
                typ: Some("tmpfs".into()),
                source: Some("tmpfs".into()),
                options: vec![],
            },
        ];
        assert_eq!(
            binds(&rootfs, &mounts)
                .iter()
                .map(|b| b
                    .target
                    .strip_prefix(rootfs.canonicalize().unwrap())
                    .unwrap())
                .collect::<Vec<_>>(),
            [Path::new("data"), Path::new("conf")]
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let rootfs2 = rootfs.clone();
        let view = std::thread::spawn(move || {
            let r = enter_view(&rootfs2, &mounts, false).map(|()| nix::unistd::gettid().as_raw());
            ready_tx
                .send(r.map_err(|e| crate::error::report(&e)))
                .unwrap();
            let _ = done_rx.recv();
        });
        let tid = ready_rx.recv().unwrap().unwrap();
        let ns = format!("/proc/self/task/{tid}/ns/mnt");
        let outside_c = outside.clone();
        let seen = std::thread::spawn(move || {
            // A thread joins a mount namespace with an fs_struct of its own (as podman does).
            let f = fs::File::open(ns).unwrap();
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            fs::write("/tmp/copied-in", b"cp").unwrap();
            fs::write("/data/to-volume", b"vol").unwrap();
            (
                fs::read("/marker").unwrap(),
                fs::write("/conf/x", b"x").is_err(),
                Path::new("/escape/to-volume").exists(),
                fs::read_dir("/proc").unwrap().count(),
                outside_c.exists() || Path::new("/etc/passwd").exists(),
            )
        })
        .join()
        .unwrap();
        done_tx.send(()).unwrap();
        view.join().unwrap();
        assert_eq!(seen.0, b"rootfs");
        assert!(seen.1, "a ro volume refuses writes");
        assert!(!seen.2, "the escaping destination was not bound");
        assert_eq!(seen.3, 0, "no process listed in the view's /proc");
        assert!(!seen.4, "no host file in the view");
        // The writes landed in the rootfs and the volume on the host.
        assert_eq!(fs::read(rootfs.join("tmp/copied-in")).unwrap(), b"cp");
        assert_eq!(fs::read(vol.join("to-volume")).unwrap(), b"vol");
        assert!(!outside.join("to-volume").exists());
        fs::remove_dir_all(&base).unwrap();
    }
}
