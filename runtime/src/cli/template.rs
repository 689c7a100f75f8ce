//! `ember template ...`: make, list and remove template pods (snapshots of a booted pod's VM
//! that pods with `"template": NAME` in their config start from).

use crate::api::{Runtime, TemplateInfo};
use clap::Subcommand;
use std::path::PathBuf;

use super::output::{outln, to_json};

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Boot a pod from the config (defaults without one), snapshot it once its agent is
    /// ready, remove the pod.
    Create {
        name: String,
        /// Pod config (JSON): kernel, initrd, memory, vCPUs, disk slots of the template.
        #[arg(long, short, conflicts_with = "oci")]
        config: Option<PathBuf>,
        /// A template for the OCI face (podman, containerd): the VM its containers without
        /// resource limits get, by the runtime configuration (/etc/ember/config.toml), with
        /// a NIC for the engine's network. Name it in the configuration's `[runtime] template`.
        #[arg(long)]
        oci: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the templates.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a template (pods started from it run on).
    Delete { name: String },
}

pub fn run(global: &super::GlobalArgs, cmd: TemplateCommand) -> i32 {
    let rt = Runtime::from_flag(global.root.as_deref());
    match exec(&rt, cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ember: {}", super::report(&e));
            1
        }
    }
}

fn exec(rt: &Runtime, cmd: TemplateCommand) -> Result<(), super::pod::Error> {
    match cmd {
        TemplateCommand::Create {
            name,
            config,
            oci,
            json,
        } => {
            let cfg = if oci {
                let settings = crate::config::file::RuntimeConfig::load()
                    .map_err(|e| crate::api::Error::Config(crate::error::report(&e)))?;
                crate::oci::vm::oci_template_config(&settings)
            } else {
                super::pod::load_config(config.as_deref())?
            };
            let t = rt.create_template(&name, cfg)?;
            if json {
                outln!("{}", to_json(&t));
            } else {
                outln!("{}", line(&t));
            }
        }
        TemplateCommand::List { json } => {
            let all = rt.list_templates()?;
            if json {
                outln!("{}", to_json(&all));
            } else {
                outln!(
                    "{:<20} {:>8} {:>6} {:>12} {:>12}  KERNEL",
                    "NAME",
                    "MEM_MIB",
                    "VCPUS",
                    "MEMORY_DATA",
                    "STATE_BYTES"
                );
                for t in &all {
                    outln!("{}", line(t));
                }
            }
        }
        TemplateCommand::Delete { name } => rt.delete_template(&name)?,
    }
    Ok(())
}

fn line(t: &TemplateInfo) -> String {
    format!(
        "{:<20} {:>8} {:>6} {:>10}Mi {:>12}  {}",
        t.name,
        t.record.mem_mib,
        t.record.vcpus,
        t.record.memory_written >> 20,
        t.record.state_bytes,
        t.record.kernel.path.display()
    )
}
