//! The command line's flags and help (clap, derive): what a user can type.
//! `main.rs` validates them and turns them into library options.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes: the one list, shown by `xfer --help` and xfer(1); the
/// README's "Exit codes" says the same. `main.rs` picks them.
const EXIT_CODES: &str = "Exit codes:
  0    done
  1    any other error
  2    usage: a bad flag, value or config file (a bad --window or --bwlimit
       included), or a run refused before it changed anything (too many
       deletes: see --max-delete)
  3    partial: some entries were skipped or failed, the rest committed
  4    outside the --window, or stopped when it closed (resumable)
  5    busy: the destination stayed busy through --busy-wait
  6    unreachable: no answer within --connect-timeout, refused, no route,
       or a name that does not resolve
  7    untrusted key: the server's key is unknown or changed, or the server
       does not admit this client's key
  130  interrupted (Ctrl-C): files that arrived whole are kept, and the next
       run goes on from there
  143  stopped by SIGTERM (as 130)";

/// What push's and pull's help say of exit codes: where the list is.
macro_rules! exit_codes_see {
    () => {
        "Exit codes: see `xfer --help` or xfer(1) (0 done, 2 usage, 3 partial, 4 window, 5 busy, \
6 unreachable, 7 untrusted key)."
    };
}

/// How rates are written, for every flag and config key that takes one.
macro_rules! rate_forms {
    () => {
        "RATE is bytes/s with a binary suffix (500K, 10M, 1.5G; 1234B for plain bytes), \
bits/s with bit (512kbit, 100Mbit), or off; a bare number is KiB/s, as rsync and rclone \
read it (--bwlimit 100 is 100 KiB/s)"
    };
}

#[derive(Parser)]
#[command(name = "xfer", version, about = "Move directory trees and send only what changed", after_help = EXIT_CODES)]
pub struct Cli {
    /// Only errors on stderr: no progress, no summary (for cron).
    #[arg(short, long, global = true, overrides_with = "no_quiet")]
    pub quiet: bool,
    /// Undo --quiet.
    #[arg(long, global = true, overrides_with = "quiet", hide = true)]
    pub no_quiet: bool,
    /// More detail on stderr: -v lists each changed entry (as --itemize)
    /// and logs the session's steps; -vv adds debugging detail.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Push a local tree into a local directory or to a server (xfer://HOST[:PORT]/PATH).
    #[command(after_help = concat!(
        "Examples:\n  xfer push ./site /backup/site\n  xfer push --delete --json ./site /backup/site\n  \
xfer push ./site xfer://backup.example/site --server-fingerprint xfer:...\n  \
xfer push ./site backup            # a remote named in CONFIG_DIR/config.toml\n  \
xfer push --exclude '*.log' --exclude target/ ./src /backup/src\n  \
xfer push -q --json --tag project=web --log-json ~/xfer.jsonl ./site backup\n\n\
DEST is a server URL, a remote of the config file, an existing path, or a new\n\
local directory written as a path (./name, dir/name). A bare word that is none of\n\
these is refused, as is HOST:PATH (write xfer://HOST/PATH). A URL must name a path:\n\
xfer://HOST/. names the server's whole root.\n\n\
With --delete, a run that would delete more than half of a destination of more\n\
than 50 entries, or anything because the source is empty (an unmounted share?),\n\
is refused with exit 2 before anything changes (on --dry-run too). --max-delete N\n\
sets the limit instead of the half rule; --force-delete lifts the built-in rules.\n\n\
A .xferignore file at the source root holds more patterns (gitignore rules); it is\n\
transferred too. Command-line patterns come after it, so they win.\n\n\
config.toml holds settings and named remotes. [push] and [pull] apply to that\n\
command only, [defaults] to both (delete and exclude are refused there):\n  \
[defaults]\n  busy_wait = 300\n  bwlimit = \"08:00,1M 19:00,off\"\n  window = \"22:00-06:00\"\n  \
[push]\n  delete = true\n  exclude = [\"*.tmp\", \"cache/\"]\n  congestion = \"cubic\"\n  \
[remotes.backup]\n  url = \"xfer://backup.example:7878/site\"\n  fingerprint = \"xfer:...\"\n\
/etc/xfer/config.toml is read under it (its settings lose), and XFER_<SECTION>_<KEY>\n\
variables win over both (XFER_PUSH_MAX_DELETE=5000, XFER_REMOTES_BACKUP_URL=...).\n\n\
Each on/off flag has a --no- form that undoes it (and the config file's value).\n\n",
        rate_forms!(), ".\n\n", exit_codes_see!()
    ))]
    #[command(mut_arg("at", |a| a.hide(true)))]
    Push(PushArgs),
    /// Pull a tree from a server (xfer://HOST[:PORT]/PATH) into a local directory.
    #[command(after_help = concat!(
        "Examples:\n  xfer pull xfer://backup.example/site ./restored\n  \
xfer pull --delete xfer://backup.example/site ./mirror\n  \
xfer pull --at latest xfer://backup.example/site ./restored\n  \
xfer pull --at '2026-03-01 12:00' xfer://backup.example/site/docs/a.txt ./restored\n\n\
--at restores a snapshot of the server's history instead of its current tree: latest,\n\
an id (4 or more hex digits) or a time (RFC 3339 or YYYY-MM-DD[ HH:MM[:SS]], UTC: the\n\
last snapshot at or before it). The URL may name a tree, a directory in it or one file;\n\
`xfer snapshots URL` lists the snapshots.\n\n\
Settings come from the config file's [pull] and [defaults] sections, never [push].\n\
--delete is limited as on a push; a pull holds its deletes back until the server is\n\
done, and a refused pull (exit 2) deletes nothing.\n\n",
        rate_forms!(), ".\n\n", exit_codes_see!()
    ))]
    #[command(
        mut_arg("src", |a| a.value_name("SRC").help(
            "The server's tree to restore: xfer://HOST[:PORT]/PATH (a tree, a directory in it or one file), \
             or a remote of the config file"
        )),
        mut_arg("dest", |a| a.value_name("DEST").help("Where it goes: a local directory (created if missing)")),
        mut_arg("exclude", |a| a.hide(true)),
        mut_arg("exclude_from", |a| a.hide(true)),
        mut_arg("dry_run", |a| a.hide(true))
    )]
    Pull(PushArgs),
    /// Serve a directory: admitted clients push into paths below it.
    #[command(after_help = "Example:\n  xfer serve --root /srv/backups --listen 0.0.0.0:7878 --allow xfer:...\n  \
xfer serve --store /srv/repo --listen 0.0.0.0:7878 --allow xfer:...   # no mirror tree\n\n\
The server prints its fingerprint; clients pin it with `xfer trust HOST:PORT FINGERPRINT`.\n\
Its state lives in ROOT/.xfer, which clients can never write.\n\
CONFIG_DIR/config.toml's [serve] section may set congestion = \"NAME\" and metrics = \"ADDR\".\n\n\
An authorized-clients file grants per client and path prefix:\n  \
xfer:aaaa...  rw      /laptop   # push, pull, forget snapshots and prune below /laptop\n  \
xfer:cccc...  append  /phone    # push and pull, never forget or prune: what a push\n  \
                                # overwrites or deletes stays in the history\n  \
xfer:bbbb...  ro                # pull and list snapshots anywhere\n\n\
Retention: the --keep-* flags set every tree's policy; --retention FILE sets policies\n\
per tree prefix, the longest matching prefix winning over the flags:\n  \
/laptop      daily=7 weekly=4 within=30d\n  \
/laptop/tmp  last=1          # comments start with #\n\
(rules: last, hourly, daily, weekly, monthly, yearly = N; within = a duration). A tree\n\
neither covers keeps every snapshot. With any policy the server forgets what it does\n\
not keep and prunes its history every --prune-every (default 24h; the first run one\n\
interval after start), without blocking pushes or pulls, and writes an audit line with\n\
direction \"retention\". On the server machine, `xfer forget` and `xfer prune` take the\n\
tree's path and --root ROOT.")]
    Serve {
        /// The directory to serve: clients push into a mirror tree below it.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Keep only the repository, no mirror tree: every push becomes a
        /// snapshot in the history store at PATH (created if missing), a
        /// pull rebuilds files from its chunks (the latest snapshot unless
        /// --at says otherwise). Instead of --root.
        #[arg(long, value_name = "PATH")]
        store: Option<String>,
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: std::net::SocketAddr,
        /// A client fingerprint to admit, read-write on the whole root
        /// (repeatable); see `xfer id` on the client.
        #[arg(long = "allow", value_name = "FINGERPRINT")]
        allow: Vec<String>,
        /// Cap each session's data direction: 500K, 10M, 100Mbit, off; a
        /// bare number is KiB/s (same RATE forms as push).
        #[arg(long, value_name = "RATE")]
        bwlimit: Option<String>,
        /// Cap all sessions together.
        #[arg(long, value_name = "RATE")]
        bwlimit_total: Option<String>,
        /// Congestion controller for what the server sends (pulls' data):
        /// xfer (the default), cubic, newreno or bbr. [config: [serve] congestion]
        #[arg(long, value_name = "NAME")]
        congestion: Option<xfer::Congestion>,
        /// A file of grants, one per line: FINGERPRINT rw|append|ro
        /// [PATH-PREFIX]; append may push but never forget or prune.
        #[arg(long, value_name = "FILE")]
        authorized_clients: Option<PathBuf>,
        /// Where the server's identity is kept.
        #[arg(long, env = "XFER_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
        /// Sessions served at once; more clients are told the server is
        /// busy and retry.
        #[arg(long, value_name = "N", default_value_t = xfer::DEFAULT_MAX_SESSIONS,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
        max_sessions: usize,
        /// Close a session whose client sends nothing for this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
        idle_timeout: u64,
        /// Append one JSON line per session (time, client, path, direction,
        /// tags, files and bytes, result, duration) to FILE.
        /// [default: ROOT/.xfer/audit.jsonl, or STORE/audit.jsonl with --store]
        #[arg(long, value_name = "FILE")]
        audit_log: Option<PathBuf>,
        /// Dedup across clients: a push is not sent chunks any client
        /// already stored here (by default only the pushing client's own
        /// count). It costs privacy: a client can learn that the server holds
        /// a chunk it never sent, i.e. that another client stored the same
        /// content. Use it only when clients trust each other (one
        /// organisation's machines).
        #[arg(long)]
        dedup_across_clients: bool,
        /// Serve Prometheus metrics over HTTP on ADDR (e.g. 127.0.0.1:9186):
        /// GET /metrics gives sessions, bytes by client and tag, refusals,
        /// durations and each tree's last complete push (see README,
        /// "Metrics"). [config: [serve] metrics]
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        #[command(flatten)]
        retention: ServeRetention,
    },
    /// List the snapshots of a server's tree (xfer://HOST/PATH) or of a local push destination.
    #[command(after_help = "Examples:\n  xfer snapshots xfer://backup.example/site\n  \
xfer snapshots --json /backup/site\n\n\
Each push that commits leaves a snapshot of the tree it left; what it overwrote or\n\
deleted stays in the history. Restore one with xfer pull --at ID|TIME|latest.")]
    Snapshots(HistoryArgs),
    /// Forget snapshots, by id or by a retention policy (their data goes at the next prune).
    #[command(after_help = "Examples:\n  xfer forget xfer://backup.example/site 3f2a9c01\n  \
xfer forget --keep-last 7 --keep-daily 14 --keep-monthly 12 --dry-run xfer://backup.example/site\n  \
xfer forget --keep-within 30d /backup/site\n\n\
A policy keeps a snapshot when any rule keeps it, each tree's snapshots apart; a\n\
policy without any rule is refused (it would forget everything). Only an rw grant\n\
may forget on a server; an append client is refused.")]
    Forget(ForgetArgs),
    /// Delete history data that no snapshot references any more.
    #[command(after_help = "Examples:\n  xfer prune xfer://backup.example/site\n  xfer prune /backup/site\n\n\
Prune works in two phases so a push running meanwhile never loses data: what it\n\
frees now was set aside by an earlier prune. Only an rw grant may prune.")]
    Prune(HistoryArgs),
    /// Pin a server's fingerprint in known hosts (replacing its old pin, keeping every other line).
    Trust {
        /// The server, as HOST[:PORT] (port 7878 when none is given) or an xfer:// URL of it.
        authority: String,
        /// Its fingerprint, as `xfer id` prints it on the server.
        fingerprint: String,
        /// Where known hosts are kept.
        #[arg(long, env = "XFER_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
    /// Print this host's identity (its key's fingerprint), creating it on first use.
    #[command(after_help = "The identity lives in the config dir: --config-dir, $XFER_CONFIG_DIR, \
$CONFIGURATION_DIRECTORY (systemd), $XDG_CONFIG_HOME/xfer, ~/.config/xfer, or /etc/xfer for root \
without a home.")]
    Id {
        /// Where the identity is kept.
        #[arg(long, env = "XFER_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  xfer completions bash > /etc/bash_completion.d/xfer")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff) on stdout, or write every page to a directory.
    #[command(
        after_help = "Examples:\n  xfer man --dir /usr/local/share/man/man1   # xfer.1, xfer-push.1, xfer-pull.1, ...\n  \
xfer man > /usr/local/share/man/man1/xfer.1\n  xfer man push | man -l -"
    )]
    Man {
        /// The subcommand whose page to print (push, pull, serve, ...);
        /// without it, xfer(1).
        #[arg(value_name = "COMMAND")]
        command: Option<String>,
        /// Write xfer(1) and a page for each subcommand it names
        /// (xfer-push(1), ...) into DIR, created if missing.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        dir: Option<PathBuf>,
    },
    /// Chunk one file and print its size, hash and chunk count as JSON.
    #[command(hide = true)]
    Digest {
        /// The file to read.
        file: PathBuf,
    },
}

/// A retention policy, as `xfer forget` and `xfer serve` take it.
#[derive(clap::Args)]
pub struct KeepFlags {
    /// Keep the newest N snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days (UTC).
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot at most this much older than the newest, e.g.
    /// 36h, 30d, 8w, 6m, 1y6m (h hours, d days, w weeks, m months of 31
    /// days, y years of 366 days; terms add up).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
}

impl KeepFlags {
    /// The policy these flags give (an empty one when none is set).
    pub fn policy(&self) -> anyhow::Result<xfer::KeepPolicy> {
        let within_secs = self.keep_within.as_deref().map(xfer::parse_within).transpose()?;
        Ok(xfer::KeepPolicy {
            last: self.keep_last.unwrap_or(0),
            hourly: self.keep_hourly.unwrap_or(0),
            daily: self.keep_daily.unwrap_or(0),
            weekly: self.keep_weekly.unwrap_or(0),
            monthly: self.keep_monthly.unwrap_or(0),
            yearly: self.keep_yearly.unwrap_or(0),
            within_secs,
        })
    }
}

/// `xfer serve`'s retention: the default policy, per-tree policies and
/// how often they are applied.
#[derive(clap::Args)]
pub struct ServeRetention {
    /// The policy of every tree no `--retention` line covers.
    #[command(flatten)]
    pub keep: KeepFlags,
    /// Per-tree policies, one line per tree prefix:
    /// `/laptop daily=7 weekly=4 within=30d` (`#` comments; the longest
    /// matching prefix wins over the --keep-* flags).
    #[arg(long, value_name = "FILE")]
    pub retention: Option<PathBuf>,
    /// How often to apply the policies and prune: N followed by s, min, h
    /// or d (e.g. 6h), or off. [default: 24h when a policy is set]
    #[arg(long, value_name = "DURATION")]
    pub prune_every: Option<String>,
}

/// Where a history command looks, and how it reports.
#[derive(clap::Args)]
pub struct HistoryArgs {
    /// A server URL (xfer://HOST[:PORT]/PATH), a remote of the config file,
    /// or a local push destination.
    pub target: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where xfer keeps its state (a local destination's history lives
    /// there) [default: $XDG_STATE_HOME/xfer].
    #[arg(long, env = "XFER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the identity and known hosts are kept.
    #[arg(long, env = "XFER_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Accept the server only with this fingerprint (and pin it).
    #[arg(long, value_name = "FINGERPRINT")]
    pub server_fingerprint: Option<String>,
    /// Trust an unknown server on first use and pin it.
    #[arg(long)]
    pub accept_new: bool,
    /// On the server's machine: TARGET is a tree inside ROOT, a root that
    /// `xfer serve --root ROOT` serves; its history is read and changed on
    /// disk, without the network.
    #[arg(long, value_name = "ROOT")]
    pub root: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub target: HistoryArgs,
    /// Snapshot ids to forget (4 or more hex digits of each).
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub keep: KeepFlags,
    /// Say what would be kept and forgotten, forget nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// The local tree to send.
    pub src: PathBuf,
    /// Where it goes: a server URL (xfer://HOST[:PORT]/PATH), a remote of
    /// the config file, or a local directory (created if missing).
    pub dest: PathBuf,
    /// Delete destination entries that the source does not have.
    #[arg(long, overrides_with = "no_delete")]
    pub delete: bool,
    /// Do not delete (undoes --delete and the config file's delete).
    #[arg(long, overrides_with = "delete")]
    pub no_delete: bool,
    /// Refuse, before changing anything, a run that would delete more than
    /// N entries (a directory counts with everything in it). Given, it
    /// replaces the more-than-half rule. [config: max_delete]
    #[arg(long, value_name = "N")]
    pub max_delete: Option<u64>,
    /// Lift the built-in delete limits: more than half of a destination of
    /// more than 50 entries, and anything from an empty source.
    #[arg(long, overrides_with = "no_force_delete")]
    pub force_delete: bool,
    /// Keep the built-in delete limits (undoes --force-delete).
    #[arg(long, overrides_with = "force_delete", hide = true)]
    pub no_force_delete: bool,
    /// Read every file instead of trusting unchanged size, mtime and inode.
    #[arg(short = 'c', long, overrides_with = "no_checksum")]
    pub checksum: bool,
    /// Trust unchanged size, mtime and inode (undoes --checksum and the
    /// config file's checksum).
    #[arg(long, overrides_with = "checksum")]
    pub no_checksum: bool,
    /// Chunk encoding: auto (zstd at a level adapted to the link, raw where it does not pay), zstd, lz4 or raw.
    #[arg(long, value_enum, default_value_t = CompressArg::Auto)]
    pub compress: CompressArg,
    /// zstd level for --compress zstd.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
    /// Print the run's record (times, source, destination, every count,
    /// the exit code) as one JSON object on stdout, on every outcome.
    #[arg(long, overrides_with = "no_json")]
    pub json: bool,
    /// Undo --json.
    #[arg(long, overrides_with = "json", hide = true)]
    pub no_json: bool,
    /// Where xfer keeps its state [default: $XDG_STATE_HOME/xfer].
    #[arg(long, env = "XFER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the identity and known hosts are kept (remote pushes).
    #[arg(long, env = "XFER_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Accept the server only with this fingerprint (and pin it).
    #[arg(long, value_name = "FINGERPRINT")]
    pub server_fingerprint: Option<String>,
    /// Trust an unknown server on first use and pin it.
    #[arg(long, overrides_with = "no_accept_new")]
    pub accept_new: bool,
    /// Undo --accept-new.
    #[arg(long, overrides_with = "accept_new", hide = true)]
    pub no_accept_new: bool,
    /// Give up on a server that has not answered within SECS seconds
    /// (exit 6). [default: 15]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout: Option<u64>,
    /// While another push holds the destination, retry for up to this many
    /// seconds before giving up (0: fail at once).
    /// [default: 60, or the config file's]
    #[arg(long, value_name = "SECONDS")]
    pub busy_wait: Option<u64>,
    /// Leave out entries matching this gitignore-style pattern (repeatable;
    /// pushes only). Excluded destination entries survive --delete.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from FILE, one per line (pushes only).
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Cap the data direction: a RATE (500K, 10M, 1.5G bytes/s; 100Mbit
    /// bits/s; off; a bare number is KiB/s, as in rsync: 100 is 100 KiB/s)
    /// or a timetable like "08:00,512K 19:00,10M 23:00,off", with optional
    /// weekdays (Mon-08:00,1M) and UP:DOWN rates.
    #[arg(long, value_name = "RATE|TIMETABLE")]
    pub bwlimit: Option<String>,
    /// Congestion controller for what this side sends: xfer (the
    /// default: fills long, lossy links without overfilling their queues),
    /// cubic, newreno or bbr. [config: congestion]
    #[arg(long, value_name = "NAME")]
    pub congestion: Option<xfer::Congestion>,
    /// Run only inside this window, e.g. 22:00-06:00 or Mon-Fri,22:00-06:00
    /// (local time): outside it exit 4 at once; when it closes mid-run stop
    /// at a commit point and exit 4 (the next run goes on from there).
    /// `always` lifts a window set in the config file.
    #[arg(long, value_name = "WINDOW")]
    pub window: Option<String>,
    /// Compare and plan only: report what would be sent (chunk bytes after
    /// encoding, estimated without deltas) and change nothing.
    #[arg(short = 'n', long, overrides_with = "no_dry_run")]
    pub dry_run: bool,
    /// Undo --dry-run.
    #[arg(long, overrides_with = "dry_run", hide = true)]
    pub no_dry_run: bool,
    /// Add the cost of the run to the JSON summary: data-direction wire
    /// bytes (the estimate, on a dry run) times this price per GB.
    #[arg(long, value_name = "USD_PER_GB")]
    pub egress_price: Option<f64>,
    /// Add the cost of the server's object-store requests to the JSON
    /// summary: writes and listings at the first price, reads at the
    /// second, each per 1,000 requests (S3's classes A and B, e.g.
    /// 0.005,0.0004); deletes are free. On a dry run, the writes a real
    /// run would make are estimated. Needs a server with `--store`.
    #[arg(long, value_name = "WRITES,READS", value_parser = parse_request_price)]
    pub request_price: Option<RequestPrice>,
    /// One line per changed entry: >f file written, cd dir created, cL
    /// symlink, .m metadata only, *deleting (like rsync -i).
    #[arg(short, long, overrides_with = "no_itemize")]
    pub itemize: bool,
    /// Undo --itemize.
    #[arg(long, overrides_with = "itemize", hide = true)]
    pub no_itemize: bool,
    /// Label the session KEY=VALUE in the server's audit log and in
    /// --log-json (repeatable; for cost allocation, e.g. project=web).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Append this run's record (as --json prints it) to FILE as one JSON
    /// line on every outcome, making FILE's directory. [config: log_json]
    #[arg(long, value_name = "FILE")]
    pub log_json: Option<PathBuf>,
    /// Pull only: restore the server's snapshot SEL instead of its current
    /// tree: latest, an id (4+ hex digits) or a time (RFC 3339 or
    /// YYYY-MM-DD[ HH:MM[:SS]], UTC); see `xfer snapshots`.
    #[arg(long, value_name = "SEL")]
    pub at: Option<String>,
    /// Outside the window, sleep until it opens instead of exiting 4.
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Undo --wait.
    #[arg(long, overrides_with = "wait", hide = true)]
    pub no_wait: bool,
}

/// USD per 1,000 requests: writes and listings, and reads.
#[derive(Clone, Copy, Debug)]
pub struct RequestPrice {
    pub writes: f64,
    pub reads: f64,
}

fn parse_request_price(text: &str) -> Result<RequestPrice, String> {
    let bad =
        || format!("{text:?} is not a request price: give USD per 1,000 writes and per 1,000 reads, e.g. 0.005,0.0004");
    let (writes, reads) = text.split_once(',').ok_or_else(bad)?;
    let price = |p: &str| p.trim().parse::<f64>().ok().filter(|p| p.is_finite() && *p >= 0.0).ok_or_else(bad);
    Ok(RequestPrice { writes: price(writes)?, reads: price(reads)? })
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not a tag: use KEY=VALUE, e.g. project=web")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CompressArg {
    Auto,
    Zstd,
    Lz4,
    Raw,
}
