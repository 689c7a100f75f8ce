//! The container's command, looked up at `create` as runc looks it up: runc's `create` fails
//! when `process.args[0]` cannot be executed in the rootfs, and engines map its message to
//! their exit codes (podman: 127 "not found" for `executable file not found in $PATH` and
//! `no such file or directory`, 126 for `permission denied`). ember runs the process in the
//! guest, at `start` — too late for the engine to tell; so the VM backend looks the command up
//! in the bundle's rootfs on the host (the same tree the guest sees) before anything is made,
//! with the agent's rules (`PATH` from the process's environment, its default otherwise).
//! A command that a mount could provide (under a bind or another of the spec's mounts) is left
//! to the guest.

use super::bundle::ContainerConfig;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The agent's `PATH` when the process has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// runc's message when the command of `config` cannot run in its rootfs; `Ok` when it can,
/// or when only the guest can tell.
pub fn check(config: &ContainerConfig) -> Result<(), String> {
    let Some(cmd) = config.process.args.first() else {
        return Ok(());
    };
    let mounted = |p: &Path| {
        config
            .mounts
            .iter()
            .any(|m| p.starts_with(&m.destination) && m.destination != Path::new("/"))
    };
    if cmd.contains('/') {
        let path = Path::new(cmd);
        if !path.is_absolute() {
            return Ok(());
        }
        let Some((inside, host)) = resolve(&config.rootfs, path) else {
            return Ok(());
        };
        if mounted(&inside) {
            return Ok(());
        }
        return match std::fs::metadata(&host) {
            Err(_) => Err(format!(
                "exec: {cmd:?}: stat {cmd}: no such file or directory"
            )),
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
            Ok(_) => Err(format!("exec: {cmd:?}: permission denied")),
        };
    }
    let path_var = config
        .process
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path_var.split(':').filter(|d| d.starts_with('/')) {
        let Some((inside, host)) = resolve(&config.rootfs, &Path::new(dir).join(cmd)) else {
            return Ok(());
        };
        if mounted(&inside) {
            return Ok(());
        }
        if std::fs::metadata(&host)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return Ok(());
        }
    }
    Err(format!("exec: {cmd:?}: executable file not found in $PATH"))
}

/// `path` (absolute, as the container sees it) resolved in `root` as the guest resolves it
/// ([`agent::mounts::in_root`]: symlinks followed, absolute targets and `..` kept inside
/// `root`): the path the container sees and the host's path; `None` past the kernel's
/// symlink limit.
fn resolve(root: &Path, path: &Path) -> Option<(PathBuf, PathBuf)> {
    let host = agent::mounts::in_root(root, path.to_str()?).ok()?;
    let inside = Path::new("/").join(host.strip_prefix(root).ok()?);
    Some((inside, host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::bundle::MountConfig;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn config(root: &Path, args: &[&str], env: &[&str]) -> ContainerConfig {
        ContainerConfig {
            id: "c".into(),
            bundle: "/b".into(),
            rootfs: root.to_path_buf(),
            readonly_rootfs: false,
            process: crate::oci::bundle::ProcessConfig {
                args: args.iter().map(|s| s.to_string()).collect(),
                env: env.iter().map(|s| s.to_string()).collect(),
                cwd: "/".into(),
                ..Default::default()
            },
            hostname: None,
            mounts: Vec::new(),
            namespaces: Vec::new(),
            cgroups_path: None,
            annotations: Default::default(),
            role: crate::oci::bundle::PodRole::Single,
            resources: Default::default(),
            linux: Default::default(),
        }
    }

    #[test]
    fn commands_are_looked_up_as_runc_and_the_agent_do() {
        let root = std::env::temp_dir().join(format!("ember-cmd-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["bin", "usr/bin", "etc", "app"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("bin/busybox"), b"").unwrap();
        fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("busybox", root.join("bin/sh")).unwrap();
        // An absolute link resolves in the rootfs, not on the host.
        symlink("/bin/busybox", root.join("usr/bin/env")).unwrap();
        symlink("/etc/passwd", root.join("usr/bin/host-passwd")).unwrap();
        symlink("loop", root.join("bin/loop")).unwrap();
        fs::write(root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        let ok = |args: &[&str], env: &[&str]| check(&config(&root, args, env));
        assert_eq!(ok(&["sh"], &["PATH=/bin"]), Ok(()));
        assert_eq!(ok(&["/bin/sh", "-c", "true"], &[]), Ok(()));
        assert_eq!(ok(&["env"], &[]), Ok(()), "the agent's default PATH");
        assert_eq!(ok(&["/usr/bin/env"], &[]), Ok(()));
        assert_eq!(ok(&["../bin/sh"], &[]), Ok(()), "relative: the guest tells");
        assert_eq!(
            ok(&["nosuchcmd"], &["PATH=/bin:/usr/bin"]),
            Err(r#"exec: "nosuchcmd": executable file not found in $PATH"#.into())
        );
        assert_eq!(
            ok(&["sh"], &["PATH=/usr/bin"]),
            Err(r#"exec: "sh": executable file not found in $PATH"#.into())
        );
        assert_eq!(
            ok(&["/no/such/cmd"], &[]),
            Err(r#"exec: "/no/such/cmd": stat /no/such/cmd: no such file or directory"#.into())
        );
        assert_eq!(
            ok(&["/etc/passwd"], &[]),
            Err(r#"exec: "/etc/passwd": permission denied"#.into())
        );
        assert_eq!(
            ok(&["/usr/bin/host-passwd"], &[]),
            Err(r#"exec: "/usr/bin/host-passwd": permission denied"#.into())
        );
        assert_eq!(
            ok(&["/bin/loop"], &[]),
            Ok(()),
            "a link loop: the guest tells"
        );
        // A command a mount may provide is left to the guest.
        let mut c = config(&root, &["/app/run"], &[]);
        c.mounts.push(MountConfig {
            destination: "/app".into(),
            typ: Some("bind".into()),
            source: Some("/srv/app".into()),
            options: vec!["rbind".into()],
        });
        assert_eq!(check(&c), Ok(()));
        fs::remove_dir_all(&root).unwrap();
    }
}
