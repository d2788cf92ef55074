//! `xfer serve`: a server on the library's [`Server`], stopped by SIGINT
//! or SIGTERM at each session's next commit point. Under systemd
//! (`Type=notify`) it says READY once listening, pings the watchdog at half
//! its interval, and says STOPPING when a signal arrives.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use xfer::{
    Access, Congestion, Fingerprint, Identity, Rate, Retention, RetentionTable, Server, ServerOptions, Timetable,
    DEFAULT_PRUNE_EVERY,
};

use crate::args::ServeRetention;
use crate::config::Config;

use crate::{runtime, say, usage, usage_bail, StopSignals, EXIT_TERMINATED, SHUTDOWN_GRACE};

/// What `xfer serve` allows each session and all of them.
pub(crate) struct ServeLimits {
    pub(crate) per_session: Rate,
    pub(crate) total: Rate,
    pub(crate) max_sessions: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) congestion: Congestion,
    /// Whether a push draws on every client's chunks, not only its own.
    pub(crate) dedup_across_clients: bool,
    /// Where to serve Prometheus metrics, if anywhere.
    pub(crate) metrics: Option<std::net::SocketAddr>,
}

impl ServeLimits {
    /// The limits the flags give, `--congestion` and `--metrics` over the
    /// config file's.
    pub(crate) fn from_flags(
        (bwlimit, bwlimit_total): (Option<&str>, Option<&str>),
        (congestion, metrics): (Option<Congestion>, Option<std::net::SocketAddr>),
        config_dir: &std::path::Path,
        max_sessions: usize,
        idle_timeout: u64,
        dedup_across_clients: bool,
    ) -> anyhow::Result<ServeLimits> {
        let per_session = bwlimit.map(str::parse::<Rate>).transpose()?.unwrap_or_default();
        let total = bwlimit_total.map(str::parse::<Rate>).transpose()?.unwrap_or_default();
        for (flag, text, rate) in [("--bwlimit", bwlimit, per_session), ("--bwlimit-total", bwlimit_total, total)] {
            if let (Some(text), true) = (text, rate.is_slow()) {
                crate::warn_slow_rate(flag, text);
            }
        }
        let configured_serve = Config::load(config_dir)?.serve; // checked when loaded
        let configured = configured_serve.congestion.as_deref().map(str::parse::<Congestion>).transpose()?;
        Ok(ServeLimits {
            per_session,
            total,
            max_sessions,
            idle_timeout: Duration::from_secs(idle_timeout),
            congestion: congestion.or(configured).unwrap_or_default(),
            dedup_across_clients,
            metrics: metrics.or(configured_serve.metrics),
        })
    }
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
        usage_bail!(
            "no client is allowed: pass --allow FINGERPRINT or --authorized-clients FILE \
             (run `xfer id` on the client to get its fingerprint)"
        );
    }
    Ok(access)
}

/// What `xfer serve` serves: a root of mirror trees, or a store alone.
enum Served {
    Root(PathBuf),
    Store(String),
}

impl Served {
    /// `--root` or `--store`, exactly one.
    fn from_flags(root: Option<PathBuf>, store: Option<String>) -> anyhow::Result<Served> {
        match (root, store) {
            (Some(root), None) => Ok(Served::Root(root)),
            (None, Some(store)) if !store.is_empty() => Ok(Served::Store(store)),
            (Some(_), Some(_)) => usage_bail!(
                "--root and --store exclude each other: --root DIR serves mirror trees (with their history \
                 in DIR/.xfer), --store PATH keeps only the repository; give one"
            ),
            (None, _) => usage_bail!(
                "nothing to serve: give --root DIR (mirror trees clients push into) or --store PATH \
                 (only the repository: snapshots, no mirror tree)"
            ),
        }
    }

    /// The options serving it, and how the operator is told of it.
    fn options(self, access: Access) -> anyhow::Result<(ServerOptions, String)> {
        match self {
            Served::Root(root) => {
                std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
                let root = root.canonicalize().with_context(|| format!("open {}", root.display()))?;
                let shown = root.display().to_string();
                Ok((ServerOptions::new(root, access), shown))
            }
            Served::Store(store) => {
                let shown = format!("the store {store} (no mirror tree)");
                Ok((ServerOptions::store(store, access), shown))
            }
        }
    }
}

pub(crate) fn serve(
    (root, store): (Option<PathBuf>, Option<String>),
    listen: std::net::SocketAddr,
    (allow, authorized_clients): (&[String], Option<&std::path::Path>),
    config_dir: PathBuf,
    limits: ServeLimits,
    audit_log: Option<PathBuf>,
    retention: Retention,
) -> anyhow::Result<ExitCode> {
    let served = Served::from_flags(root, store)?;
    let identity = Identity::load_or_create(&config_dir)?;
    let access = serve_access(allow, authorized_clients)?;
    let (options, shown) = served.options(access)?;
    let schedule = retention.every;
    let policies = match (&retention.default, retention.table.entries.len()) {
        (Some(_), 0) => "one policy for every tree".to_string(),
        (Some(_), n) => format!("{n} per-tree policies, the --keep-* flags elsewhere"),
        (None, n) => format!("{n} per-tree policies, other trees keep everything"),
    };
    let options = options
        .bwlimit(limits.per_session)
        .bwlimit_total(Timetable::constant(limits.total))
        .max_sessions(limits.max_sessions)
        .idle_timeout(limits.idle_timeout)
        .congestion(limits.congestion)
        .dedup_across_clients(limits.dedup_across_clients)
        .retention(retention);
    let options = limits.metrics.into_iter().fold(options, ServerOptions::metrics);
    let options = match audit_log {
        Some(path) => options.audit_log(path),
        None => options.audit_log_in_root(),
    };
    // Session records on stderr, one line each, for the operator's log.
    crate::init_logging(tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO))?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let mut signals = StopSignals::install()?;
        let server = Server::start(listen, &identity, options).with_context(|| format!("serve {shown} on {listen}"))?;
        announce(&server, &shown, &identity, limits.dedup_across_clients)?;
        if let Some(every) = schedule {
            say!("xfer: retention: {policies}, applied and pruned every {}s", every.as_secs());
        }
        let watchdog = systemd_ready();
        let code = signals.next().await;
        systemd_stopping(watchdog);
        let name = if code == EXIT_TERMINATED { "SIGTERM" } else { "SIGINT" };
        say!("xfer: {name}: stopping each session at its next commit point");
        if !server.stop(SHUTDOWN_GRACE).await {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "sessions still running after the grace period");
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // A pull's scan left running reads only: not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

/// The server's first lines: where it listens and as whom (scripts read
/// the address and fingerprint from the first), then what an operator
/// should know of its settings.
fn announce(server: &Server, shown: &str, identity: &Identity, dedup_across_clients: bool) -> anyhow::Result<()> {
    say!("xfer: serving {shown} on {} as {}", server.local_addr()?, identity.fingerprint());
    if let Some(addr) = server.metrics_addr() {
        say!("xfer: metrics on http://{addr}/metrics");
    }
    if dedup_across_clients {
        say!("xfer: dedup across clients: a client can learn that another stored the same content");
    }
    Ok(())
}

/// Tells systemd how the server is; without `$NOTIFY_SOCKET` (not under
/// systemd, or not `Type=notify`) it says nothing.
fn tell_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "cannot notify systemd through $NOTIFY_SOCKET");
    }
}

/// Says READY and starts pinging the watchdog, if systemd set one.
fn systemd_ready() -> Option<tokio::task::JoinHandle<()>> {
    tell_systemd(sd_notify::NotifyState::Ready);
    watchdog_interval().map(|every| tokio::spawn(feed_watchdog(every)))
}

/// Says STOPPING; the watchdog's pings end.
fn systemd_stopping(watchdog: Option<tokio::task::JoinHandle<()>>) {
    tell_systemd(sd_notify::NotifyState::Stopping);
    if let Some(task) = watchdog {
        task.abort();
    }
}

/// How often to ping systemd's watchdog: half its interval
/// (`$WATCHDOG_USEC`, set by `WatchdogSec=`), so one late ping is no
/// restart; `None` without one.
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// Pings the watchdog every `every` for as long as the runtime answers.
async fn feed_watchdog(every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        tell_systemd(sd_notify::NotifyState::Watchdog);
    }
}

/// The retention `xfer serve`'s flags and `--retention` file give.
pub(crate) fn retention(args: &ServeRetention) -> anyhow::Result<Retention> {
    let flags = args.keep.policy().context("--keep-within")?;
    let table = match &args.retention {
        Some(file) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
            RetentionTable::parse(&text).with_context(|| format!("{}", file.display()))?
        }
        None => RetentionTable::default(),
    };
    let default = (!flags.is_empty()).then_some(flags);
    let mut retention = Retention { default, table, every: None };
    retention.every = match args.prune_every.as_deref() {
        Some("off") => None,
        Some(text) => Some(interval(text)?),
        None => retention.is_set().then_some(DEFAULT_PRUNE_EVERY),
    };
    if retention.every.is_some() && !retention.is_set() {
        usage_bail!("--prune-every needs a policy: give --keep-* flags or --retention FILE");
    }
    Ok(retention)
}

/// `--prune-every`: a count and s, min, h or d.
fn interval(text: &str) -> anyhow::Result<Duration> {
    let bad = || format!("--prune-every {text:?}: use a number and s, min, h or d (e.g. 30min, 6h, 1d), or off");
    let split = text.find(|c: char| !c.is_ascii_digit()).with_context(bad).map_err(usage)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok().with_context(bad).map_err(usage)?;
    let unit = match unit {
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => usage_bail!("{}", bad()),
    };
    let secs = number.checked_mul(unit).filter(|&s| s > 0).with_context(bad).map_err(usage)?;
    Ok(Duration::from_secs(secs))
}
