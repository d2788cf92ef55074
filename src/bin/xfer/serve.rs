//! `xfer serve`: a server on the library's [`Server`], stopped by SIGINT
//! or SIGTERM at each session's next commit point.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use xfer::{Access, Congestion, Fingerprint, Identity, Rate, Server, ServerOptions, Timetable};

use crate::{runtime, StopSignals, EXIT_TERMINATED, SHUTDOWN_GRACE};

/// What `xfer serve` allows each session and all of them.
pub(crate) struct ServeLimits {
    pub(crate) per_session: Rate,
    pub(crate) total: Rate,
    pub(crate) max_sessions: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) congestion: Congestion,
}

/// The clients `xfer serve` admits: `--allow` and `--authorized-clients`
/// together, at least one.
fn serve_access(allow: &[String], authorized_clients: Option<&std::path::Path>) -> anyhow::Result<Access> {
    let allow = allow.iter().map(|fp| fp.parse::<Fingerprint>()).collect::<Result<Vec<_>, _>>()?;
    let mut access = Access::allow(&allow);
    if let Some(file) = authorized_clients {
        access.extend(Access::load(file)?);
    }
    if access.is_empty() {
        bail!(
            "no client is allowed: pass --allow FINGERPRINT or --authorized-clients FILE \
             (run `xfer id` on the client to get its fingerprint)"
        );
    }
    Ok(access)
}

pub(crate) fn serve(
    root: PathBuf,
    listen: std::net::SocketAddr,
    (allow, authorized_clients): (&[String], Option<&std::path::Path>),
    config_dir: PathBuf,
    limits: ServeLimits,
    audit_log: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let identity = Identity::load_or_create(&config_dir)?;
    let access = serve_access(allow, authorized_clients)?;
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let root = root.canonicalize().with_context(|| format!("open {}", root.display()))?;
    let options = ServerOptions::new(root.clone(), access)
        .bwlimit(limits.per_session)
        .bwlimit_total(Timetable::constant(limits.total))
        .max_sessions(limits.max_sessions)
        .idle_timeout(limits.idle_timeout)
        .congestion(limits.congestion);
    let options = match audit_log {
        Some(path) => options.audit_log(path),
        None => options.audit_log_in_root(),
    };
    // Session records on stderr, one line each, for the operator's log.
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    let runtime = runtime()?;
    runtime.block_on(async {
        let mut signals = StopSignals::install()?;
        let server = Server::start(listen, &identity, options)
            .with_context(|| format!("serve {} on {listen}", root.display()))?;
        eprintln!("xfer: serving {} on {} as {}", root.display(), server.local_addr()?, identity.fingerprint());
        let code = signals.next().await;
        let name = if code == EXIT_TERMINATED { "SIGTERM" } else { "SIGINT" };
        eprintln!("xfer: {name}: stopping each session at its next commit point");
        if !server.stop(SHUTDOWN_GRACE).await {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "sessions still running after the grace period");
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // A pull's scan left running reads only: not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}
