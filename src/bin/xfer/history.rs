//! `xfer snapshots`, `xfer forget` and `xfer prune`: a backup target's
//! history, on a server or in a local push destination.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use xfer::{default_state_dir, Client, Forgetting, PruneReport, SnapshotRecord, TransferError};

use crate::args::{ForgetArgs, HistoryArgs};
use crate::config::{Config, Target};
use crate::transfer::{with_hint, Trust};
use crate::{config_dir_or_default, runtime};

/// A target on this machine: a local push destination with its state
/// directory, or a tree inside a root this machine serves (`--root`).
enum Here<'a> {
    Dest(&'a std::path::Path, &'a std::path::Path),
    Served(&'a std::path::Path, &'a std::path::Path),
}

/// Runs `remote` against a server target, or `local` against a target on
/// this machine.
fn on_target<T>(
    args: &HistoryArgs,
    remote: impl Fn(&Client, &xfer::RemoteUrl, Option<xfer::Fingerprint>) -> Result<T, TransferError>,
    local: impl FnOnce(Here<'_>) -> Result<T, TransferError>,
) -> anyhow::Result<T> {
    if let Some(root) = &args.root {
        if !args.target.is_dir() {
            crate::usage_bail!(
                "{} is not a directory: with --root, name a tree inside {}",
                args.target.display(),
                root.display()
            );
        }
        return local(Here::Served(root, &args.target)).map_err(with_hint);
    }
    let config = Config::load(&config_dir_or_default(args.config_dir.clone())?)?;
    match config.target(&args.target).map_err(crate::usage)? {
        Target::Remote(url, configured) => {
            let trust = Trust {
                config_dir: args.config_dir.clone(),
                server_fingerprint: args.server_fingerprint.clone(),
                accept_new: args.accept_new,
            };
            trust.run(&url, configured, |client, pin| remote(client, &url, pin))
        }
        Target::Local => {
            if !args.target.is_dir() {
                crate::usage_bail!(
                    "{} is not a directory: name a local push destination or a server URL",
                    args.target.display()
                );
            }
            let state_dir = state_dir(args)?;
            local(Here::Dest(&args.target, &state_dir)).map_err(with_hint)
        }
    }
}

fn state_dir(args: &HistoryArgs) -> anyhow::Result<PathBuf> {
    let configured = Config::load(&config_dir_or_default(args.config_dir.clone())?)?.settings(true).state_dir;
    match args.state_dir.clone().or(configured).or_else(default_state_dir) {
        Some(dir) => Ok(dir),
        None => bail!("cannot find a state directory: set HOME (or an absolute XDG_STATE_HOME, or XFER_STATE_DIR), or pass --state-dir DIR"),
    }
}

/// `xfer snapshots TARGET`.
pub(crate) fn snapshots(args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let records = on_target(
        args,
        |client, url, pin| runtime.block_on(client.snapshots(url, pin)),
        |here| match here {
            Here::Dest(dest, state) => runtime.block_on(Client::snapshots_local(dest, state)),
            Here::Served(root, tree) => runtime.block_on(Client::snapshots_served(root, tree)),
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else if records.is_empty() {
        eprintln!("xfer: {} has no snapshots yet: each push that commits leaves one", args.target.display());
    } else {
        println!("{:<12}  {:<20}  {:<16}  {:>8}  {:>10}  SOURCE", "ID", "TIME (UTC)", "TREE", "FILES", "BYTES");
        for record in &records {
            println!("{}", line(record));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One snapshot on one line.
fn line(r: &SnapshotRecord) -> String {
    let mut text = format!(
        "{:<12}  {:<20}  {:<16}  {:>8}  {:>10}  {}:{}",
        &r.id[..12.min(r.id.len())],
        r.time_text.trim_end_matches('Z').replace('T', " "),
        r.tree,
        r.files,
        r.bytes,
        r.host,
        r.source
    );
    if r.partial {
        text.push_str("  (partial)");
    }
    for (key, value) in &r.tags {
        text.push_str(&format!("  {key}={value}"));
    }
    text
}

/// `xfer forget TARGET [ID...] [--keep-* ...]`.
pub(crate) fn forget(args: &ForgetArgs) -> anyhow::Result<ExitCode> {
    let policy = args.keep.policy()?;
    let runtime = runtime()?;
    let done = match (args.ids.is_empty(), policy.is_empty()) {
        (false, false) => crate::usage_bail!("give snapshot ids or a --keep-* policy, not both"),
        (true, true) => crate::usage_bail!(
            "nothing to forget: give snapshot ids (see `xfer snapshots {}`) or a --keep-* policy; \
             a policy without rules would forget every snapshot",
            args.target.target.display()
        ),
        (false, true) if args.dry_run => {
            crate::usage_bail!("--dry-run previews a --keep-* policy; ids are forgotten as named")
        }
        (false, true) => on_target(
            &args.target,
            |client, url, pin| runtime.block_on(client.forget(url, pin, &args.ids)),
            |here| match here {
                Here::Dest(dest, state) => runtime.block_on(Client::forget_local(dest, state, &args.ids)),
                Here::Served(root, tree) => runtime.block_on(Client::forget_served(root, tree, &args.ids)),
            },
        )?,
        (true, false) => on_target(
            &args.target,
            |client, url, pin| runtime.block_on(client.forget_by_policy(url, pin, &policy, args.dry_run)),
            |here| match here {
                Here::Dest(dest, state) => {
                    runtime.block_on(Client::forget_by_policy_local(dest, state, &policy, args.dry_run))
                }
                Here::Served(root, tree) => {
                    runtime.block_on(Client::forget_by_policy_served(root, tree, &policy, args.dry_run))
                }
            },
        )?,
    };
    report_forget(&done, args);
    Ok(ExitCode::SUCCESS)
}

fn report_forget(done: &Forgetting, args: &ForgetArgs) {
    if args.target.json {
        println!("{}", serde_json::json!(done));
        return;
    }
    for verdict in &done.snapshots {
        let word = if verdict.keep { "keep  " } else { "forget" };
        let why =
            if verdict.reasons.is_empty() { String::new() } else { format!("  ({})", verdict.reasons.join(", ")) };
        println!("{word}  {}{why}", line(&verdict.snapshot));
    }
    let doomed = done.snapshots.iter().filter(|v| !v.keep).count();
    if done.dry_run {
        eprintln!("xfer: dry run: would forget {doomed} of {} snapshots; nothing changed", done.snapshots.len());
    } else {
        eprintln!(
            "xfer: forgot {} snapshots; `xfer prune {}` frees the data only they held",
            done.forgotten,
            args.target.target.display()
        );
    }
}

/// `xfer prune TARGET`.
pub(crate) fn prune(args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let report: PruneReport = on_target(
        args,
        |client, url, pin| runtime.block_on(client.prune(url, pin)),
        |here| match here {
            Here::Dest(dest, state) => runtime.block_on(Client::prune_local(dest, state)),
            Here::Served(root, tree) => runtime.block_on(Client::prune_served(root, tree)),
        },
    )?;
    if args.json {
        println!("{}", serde_json::json!(report));
    } else {
        println!(
            "deleted {} packs ({} bytes freed); set aside {} for a later prune; repacked {}; put back {}; \
             the history holds {} bytes",
            report.packs_deleted,
            report.bytes_freed,
            report.packs_doomed,
            report.packs_repacked,
            report.packs_reinstated,
            report.bytes_after
        );
    }
    Ok(ExitCode::SUCCESS)
}
