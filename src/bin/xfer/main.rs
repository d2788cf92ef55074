//! The `xfer` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use xfer::codec::Compression;
use xfer::engine::default_state_dir;
use xfer::identity::{Fingerprint, HostTrust, Identity, KnownHosts};
use xfer::transport;
use xfer::transport::access::Access;
use xfer::transport::client::{self, RemoteError, RemotePush, RemoteUrl, Report};

/// Exit code when some entries were skipped or failed and the rest committed.
const EXIT_PARTIAL: u8 = 3;

#[derive(Parser)]
#[command(name = "xfer", version, about = "Move directory trees and send only what changed")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push a local tree into a local directory or to a server (xfer://HOST[:PORT]/PATH).
    #[command(
        after_help = "Examples:\n  xfer push ./site /backup/site\n  xfer push --delete --json ./site /backup/site\n  \
xfer push ./site xfer://backup.example/site --server-fingerprint xfer:...\n\n\
Exit codes: 0 done; 1 error; 2 usage; 3 partial (some entries skipped, the rest committed)."
    )]
    Push(PushArgs),
    /// Pull a tree from a server (xfer://HOST[:PORT]/PATH) into a local directory.
    #[command(after_help = "Examples:\n  xfer pull xfer://backup.example/site ./restored\n  \
xfer pull --delete xfer://backup.example/site ./mirror\n\n\
Exit codes: 0 done; 1 error; 2 usage; 3 partial (some entries failed, the rest committed).")]
    Pull(PushArgs),
    /// Serve a directory: admitted clients push into paths below it.
    #[command(after_help = "Example:\n  xfer serve --root /srv/backups --listen 0.0.0.0:7878 --allow xfer:...\n\n\
The server prints its fingerprint; clients pin it with `xfer trust HOST:PORT FINGERPRINT`.\n\
Its state lives in ROOT/.xfer, which clients can never write.\n\n\
An authorized-clients file grants per client and path prefix:\n  \
xfer:aaaa...  rw  /laptop     # push and pull below /laptop\n  \
xfer:bbbb...  ro              # pull anything")]
    Serve {
        /// The directory to serve.
        #[arg(long)]
        root: PathBuf,
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: std::net::SocketAddr,
        /// A client fingerprint to admit, read-write on the whole root
        /// (repeatable); see `xfer id` on the client.
        #[arg(long = "allow", value_name = "FINGERPRINT")]
        allow: Vec<String>,
        /// A file of grants, one per line: FINGERPRINT rw|ro [PATH-PREFIX].
        #[arg(long, value_name = "FILE")]
        authorized_clients: Option<PathBuf>,
        /// Where the server's identity is kept.
        #[arg(long, env = "XFER_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
    /// Pin a server's fingerprint in known hosts.
    Trust {
        /// The server, as HOST:PORT.
        authority: String,
        /// Its fingerprint, as `xfer id` prints it on the server.
        fingerprint: String,
        /// Where known hosts are kept.
        #[arg(long, env = "XFER_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
    /// Print this host's identity (its key's fingerprint), creating it on first use.
    #[command(after_help = "The identity lives in the config dir: --config-dir, $XFER_CONFIG_DIR, \
$XDG_CONFIG_HOME/xfer or ~/.config/xfer.")]
    Id {
        /// Where the identity is kept.
        #[arg(long, env = "XFER_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
    /// Chunk one file and print its size, hash and chunk count as JSON.
    #[command(hide = true)]
    Digest {
        /// The file to read.
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct PushArgs {
    /// The tree to send.
    src: PathBuf,
    /// The destination directory (created if missing).
    dest: PathBuf,
    /// Delete destination entries that the source does not have.
    #[arg(long)]
    delete: bool,
    /// Read every file instead of trusting unchanged size, mtime and inode.
    #[arg(short = 'c', long)]
    checksum: bool,
    /// Chunk encoding: auto (zstd, raw where it does not pay), zstd, lz4 or raw.
    #[arg(long, value_enum, default_value_t = CompressArg::Auto)]
    compress: CompressArg,
    /// zstd level for --compress zstd.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Where xfer keeps its state [default: $XDG_STATE_HOME/xfer].
    #[arg(long, env = "XFER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where the identity and known hosts are kept (remote pushes).
    #[arg(long, env = "XFER_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Accept the server only with this fingerprint (and pin it).
    #[arg(long, value_name = "FINGERPRINT")]
    server_fingerprint: Option<String>,
    /// Trust an unknown server on first use and pin it.
    #[arg(long)]
    accept_new: bool,
    /// While another push holds the destination, retry for up to this many
    /// seconds before giving up (0: fail at once).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    busy_wait: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressArg {
    Auto,
    Zstd,
    Lz4,
    Raw,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xfer: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Push(args) => push(args),
        Command::Pull(args) => pull(args),
        Command::Serve { root, listen, allow, authorized_clients, config_dir } => {
            serve(root, listen, &allow, authorized_clients.as_deref(), config_dir)
        }
        Command::Trust { authority, fingerprint, config_dir } => {
            let fingerprint: Fingerprint = fingerprint.parse()?;
            let mut hosts = KnownHosts::load(&config_dir_or_default(config_dir)?.join(KNOWN_HOSTS))?;
            hosts.pin(&authority, fingerprint)?;
            eprintln!("xfer: pinned {authority} to {fingerprint}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Digest { file } => digest(&file),
        Command::Id { config_dir } => {
            let identity = Identity::load_or_create(&config_dir_or_default(config_dir)?)?;
            println!("{}", identity.fingerprint());
            Ok(ExitCode::SUCCESS)
        }
    }
}

const KNOWN_HOSTS: &str = "known_hosts";

fn config_dir_or_default(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir.or_else(xfer::identity::default_config_dir) {
        Some(dir) => Ok(dir),
        None => bail!("cannot find a config directory: set XDG_CONFIG_HOME or HOME, or pass --config-dir DIR"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn serve(
    root: PathBuf,
    listen: std::net::SocketAddr,
    allow: &[String],
    authorized_clients: Option<&std::path::Path>,
    config_dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let identity = Identity::load_or_create(&config_dir_or_default(config_dir)?)?;
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
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let root = root.canonicalize().with_context(|| format!("open {}", root.display()))?;
    // Session records on stderr, one line each, for the operator's log.
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    let runtime = runtime()?;
    runtime.block_on(async {
        let endpoint = transport::server_endpoint(listen, &identity, transport::Tuning::default())
            .with_context(|| format!("listen on {listen}"))?;
        eprintln!("xfer: serving {} on {} as {}", root.display(), endpoint.local_addr()?, identity.fingerprint());
        let config = std::sync::Arc::new(transport::driver::ServeConfig::new(root, access));
        tokio::select! {
            () = transport::driver::serve(endpoint.clone(), config) => {}
            _ = tokio::signal::ctrl_c() => {
                endpoint.close(0u32.into(), b"server shutting down");
                endpoint.wait_idle().await;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `session` against `url`'s server with this host's identity and the
/// server's pin (from `--server-fingerprint` or known hosts). An unknown
/// server is retried once with the key it presented when `--accept-new`
/// allows; the key a session verified is pinned for next time.
fn with_trust<T>(
    args: &PushArgs,
    url: &RemoteUrl,
    session: impl Fn(&Identity, Option<Fingerprint>) -> Result<T, RemoteError>,
) -> anyhow::Result<T> {
    let config_dir = config_dir_or_default(args.config_dir.clone())?;
    let identity = Identity::load_or_create(&config_dir)?;
    let mut hosts = KnownHosts::load(&config_dir.join(KNOWN_HOSTS))?;
    let pin = match (&args.server_fingerprint, hosts.check(&url.authority)) {
        (Some(fp), _) => Some(fp.parse::<Fingerprint>()?),
        (None, HostTrust::Pinned(fp)) => Some(fp),
        (None, HostTrust::Unknown) => None,
    };
    let mut used = pin;
    let mut result = session(&identity, pin);
    if let Err(RemoteError::UntrustedServer { seen, .. }) = &result {
        if pin.is_none() && args.accept_new {
            eprintln!("xfer: trusting {} on first use: {seen}", url.authority);
            used = Some(*seen);
            result = session(&identity, used);
        }
    }
    let value = result?;
    if let Some(fp) = used {
        if hosts.check(&url.authority) != HostTrust::Pinned(fp) {
            hosts.pin(&url.authority, fp)?;
        }
    }
    Ok(value)
}

fn pull(args: PushArgs) -> anyhow::Result<ExitCode> {
    let Some(url) = args.src.to_str().and_then(RemoteUrl::parse) else {
        bail!(
            "{} is not a server URL: use xfer://HOST[:PORT]/PATH (for local copies use xfer push)",
            args.src.display()
        );
    };
    let options = options(&args)?;
    let runtime = runtime()?;
    let report = with_trust(&args, &url, |identity, pin| {
        runtime.block_on(client::pull(&url, &args.dest, identity, pin, &options))
    })?;
    print_report(&report, args.json)
}

fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let options = options(&args)?;
    let runtime = runtime()?;
    let report = match args.dest.to_str().and_then(RemoteUrl::parse) {
        Some(url) => with_trust(&args, &url, |identity, pin| {
            runtime.block_on(client::push(&args.src, &url, identity, pin, &options))
        })?,
        None => runtime
            .block_on(client::push_embedded(&args.src, &args.dest, &options))
            .with_context(|| format!("push {} -> {}", args.src.display(), args.dest.display()))?,
    };
    print_report(&report, args.json)
}

/// The options shared by push and pull, from their flags.
fn options(args: &PushArgs) -> anyhow::Result<RemotePush> {
    let compression = match args.compress {
        CompressArg::Auto => Compression::Auto,
        CompressArg::Zstd => Compression::Zstd { level: args.zstd_level },
        CompressArg::Lz4 => Compression::Lz4,
        CompressArg::Raw => Compression::Raw,
    };
    let Some(state_dir) = args.state_dir.clone().or_else(default_state_dir) else {
        bail!("cannot find a state directory: set XDG_STATE_HOME or HOME, or pass --state-dir DIR");
    };
    let busy_wait = std::time::Duration::from_secs(args.busy_wait);
    Ok(RemotePush { delete: args.delete, checksum: args.checksum, compression, state_dir, busy_wait, filter: None })
}

/// Lists failed entries on stderr, prints the summary (JSON on stdout with
/// `--json`), and picks the exit code.
fn print_report(report: &Report, json: bool) -> anyhow::Result<ExitCode> {
    for entry in &report.failed {
        eprintln!("xfer: skipped {}: {}", entry.path, entry.error);
    }
    if json {
        let mut value = serde_json::to_value(report)?;
        if let (Some(peak), Some(object)) = (peak_rss_bytes(), value.as_object_mut()) {
            object.insert("peak_rss_bytes".into(), peak.into());
        }
        println!("{value}");
    } else {
        eprintln!(
            "{} files changed, {} deleted, {} failed; sent {} chunks in {} bytes ({} as deltas), reused {}; \
             wire {} B up, {} B down in {:.2} s",
            report.files_changed,
            report.files_deleted,
            report.failed.len(),
            report.chunks_sent,
            report.bytes_sent,
            report.chunks_delta,
            report.chunks_reused,
            report.wire_bytes_sent,
            report.wire_bytes_received,
            report.elapsed_s
        );
    }
    Ok(if report.is_partial() { ExitCode::from(EXIT_PARTIAL) } else { ExitCode::SUCCESS })
}

fn digest(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let size = file.metadata().with_context(|| format!("stat {}", path.display()))?.len();
    let params = xfer::chunk::ChunkParams::for_size(size);
    let digest = xfer::chunk::digest_stream_sized(file, params, size, |_, _, _| Ok(()))
        .with_context(|| format!("read {}", path.display()))?;
    let report = serde_json::json!({
        "size": digest.size,
        "hash": blake3::Hash::from_bytes(digest.hash.0).to_hex().to_string(),
        "chunk_params": [params.min(), params.avg(), params.max()],
        "chunks": digest.chunks.len(),
    });
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// This process's peak resident memory so far (Linux's VmHWM), for reports.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
