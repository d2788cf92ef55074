//! The `xfer` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use xfer::codec::Compression;
use xfer::engine::{default_state_dir, push_local, PushOptions, Stats};

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
    /// Push a local tree into a destination directory.
    #[command(
        after_help = "Examples:\n  xfer push ./site /backup/site\n  xfer push --delete --json ./site /backup/site\n\n\
Exit codes: 0 done; 1 error; 2 usage; 3 partial (some entries skipped, the rest committed)."
    )]
    Push(PushArgs),
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
        Command::Digest { file } => digest(&file),
        Command::Id { config_dir } => {
            let Some(dir) = config_dir.or_else(xfer::identity::default_config_dir) else {
                bail!("cannot find a config directory: set XDG_CONFIG_HOME or HOME, or pass --config-dir DIR");
            };
            let identity = xfer::identity::Identity::load_or_create(&dir)?;
            println!("{}", identity.fingerprint());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let compression = match args.compress {
        CompressArg::Auto => Compression::Auto,
        CompressArg::Zstd => Compression::Zstd { level: args.zstd_level },
        CompressArg::Lz4 => Compression::Lz4,
        CompressArg::Raw => Compression::Raw,
    };
    let Some(state_dir) = args.state_dir.or_else(default_state_dir) else {
        bail!("cannot find a state directory: set XDG_STATE_HOME or HOME, or pass --state-dir DIR");
    };
    let options = PushOptions { delete: args.delete, checksum: args.checksum, compression, state_dir };
    let stats = push_local(&args.src, &args.dest, &options)
        .with_context(|| format!("push {} -> {}", args.src.display(), args.dest.display()))?;
    for entry in &stats.skipped {
        eprintln!("xfer: skipped {}: {}", entry.path, entry.error);
    }
    if args.json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        eprintln!("{}", summary(&stats));
    }
    Ok(if stats.is_partial() { ExitCode::from(EXIT_PARTIAL) } else { ExitCode::SUCCESS })
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

fn summary(stats: &Stats) -> String {
    format!(
        "{} files scanned ({} bytes), {} changed; sent {} of {} chunks in {} bytes ({} as deltas), reused {} chunks",
        stats.files_scanned,
        stats.bytes_scanned,
        stats.files_changed,
        stats.chunks_sent,
        stats.chunks_total,
        stats.bytes_sent,
        stats.chunks_delta,
        stats.chunks_reused
    )
}
