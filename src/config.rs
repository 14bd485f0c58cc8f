//! Every window and limit the broker enforces, with the defaults from the product spec.
//!
//! [`Limits`] is also the set of `serve` flags that set them (flattened into `serve`'s
//! arguments), so each default is written once, beside the field's help. `serve` builds a
//! [`Config`] from its flags; tests build one directly and change a field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `claude-ipc serve` needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Also listen on this Unix socket (mode 0600, the broker's own user only).
    pub socket: Option<PathBuf>,
    /// `IPC_SHARED_SECRET`; `None` means open mode.
    pub shared_secret: Option<String>,
    pub limits: Limits,
    /// `serve --reset-secret`: make `shared_secret` (or open mode, without one) the data
    /// directory's own, ending every session, instead of refusing a directory protected by
    /// another secret (see `server::data_dir_guard`).
    pub reset_secret: bool,
    /// The dashboard's person's reserved name, when `serve --web` is on (see
    /// `broker::human`); `None` without the dashboard.
    pub human: Option<crate::domain::InstanceName>,
}

/// The rules' windows and caps, and the per-connection limits.
///
/// Each field is also a `serve` flag (the struct is flattened into its arguments): the doc
/// comment is the flag's help, and its `default_value` is the one default, which
/// [`Limits::default`] reads through the same parser.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Limits {
    /// A session unused this long stops working.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub session_idle_expiry: Duration,
    /// Mail for a name nobody registered is dropped after this long.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub future_mail_retention: Duration,
    /// Delivered mail stays in its sender's and recipients' history this long, then it is
    /// purged with its large-message file (and receipts of mail that expired unread go too).
    // `--delivered-retention`, its name before history existed, is still accepted (hidden) so
    // that old command lines keep working.
    #[arg(long, alias = "delivered-retention", default_value = "30d", value_parser = parse_duration)]
    pub history_retention: Duration,
    /// After a rename, the old name forwards to the new one this long.
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    pub forward_duration: Duration,
    /// Minimum time between two renames of one instance.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub rename_cooldown: Duration,
    /// Pending messages per recipient; 0 means unlimited.
    #[arg(long, default_value_t = 100)]
    pub queue_cap: u32,
    /// Requests per 60 s per instance; 0 turns the limit off.
    #[arg(long, default_value_t = 100)]
    pub rate_limit: u32,
    /// Largest request in bytes; the connection is closed after a larger one.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Content over this many bytes is stored in a file under large-messages/.
    // Counted in bytes of the content as JSON text.
    #[arg(long, default_value_t = 10 * 1024)]
    pub large_message_bytes: usize,
    /// Largest `message.data` object in bytes of JSON.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_data_bytes: usize,
    /// A send nonce repeated within this window is reported as a duplicate, not stored. Must
    /// be longer than twice --max-clock-skew plus 30s.
    // 30 s is `REPLAY_WINDOW_MARGIN`; `Limits::validate` refuses a shorter window. The spec's
    // 10 minutes is exactly twice its 5-minute skew, which would let a replay through.
    #[arg(long, default_value = "11m", value_parser = parse_duration)]
    pub replay_window: Duration,
    /// A send timestamp further than this from the broker's clock is refused.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub max_clock_skew: Duration,
    /// Connections per listener (TCP, the Unix socket each). At the cap a new one evicts the
    /// longest-quiet unauthenticated connection, or is refused. Another user holds at most a
    /// quarter, all other users together three quarters.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// A connection with no request for this long is closed.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// A request must arrive in full within this long of its first byte.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// A reply the client does not read within this long closes the connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// How often expired sessions, forwards and old mail are swept.
    // Zero turns the background sweeper off: `serve` never allows that (it raises the flag to
    // at least 100 ms); the test harness does, and sweeps by hand.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// An instance with no live session, no waiting mail and no forward to it is removed after
    /// this long unseen.
    // So that names nobody uses do not pile up (and collect notices).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub instance_retention: Duration,
    /// Requests per 60 s per peer (its user, or its address), summed over all its names; 0
    /// turns it off [default: 10 × --rate-limit]
    // `None`: `PEER_RATE_FACTOR` times `rate_limit` (so off when that is off).
    #[arg(long)]
    pub peer_rate_limit: Option<u32>,
    /// New names registered per 60 s per peer; 0 turns it off [default: 60, off with
    /// --rate-limit 0]
    // `None`: `DEFAULT_PEER_REGISTER_LIMIT`, or off when `rate_limit` is off.
    #[arg(long)]
    pub peer_register_limit: Option<u32>,
    /// New names registered per 60 s by everyone together; 0 turns it off [default: 600, off
    /// with --rate-limit 0]
    // `None`: `DEFAULT_REGISTER_LIMIT`, or off when `rate_limit` is off.
    #[arg(long)]
    pub register_limit: Option<u32>,
    /// Bytes of large-message files all stored mail may hold; 0 means unlimited.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    pub large_message_total_bytes: u64,
    /// Bytes of large-message files one sender's stored mail may hold; 0 means unlimited.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub large_message_sender_bytes: u64,
    /// Authentication failures per 60 s per peer before its requests that need
    /// authentication are refused unchecked for the rest of the minute; 0 turns it off.
    #[arg(long, default_value_t = 60)]
    pub auth_failure_limit: u32,
    /// The most rows the auth_failures table keeps; the oldest are removed first.
    #[arg(long, default_value_t = 10_000)]
    pub auth_failure_rows: u32,
    /// A connection that has not yet registered or used a session is closed after this long
    /// with no request (or --idle-timeout, if shorter).
    // So that floods of idle connections drain fast.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub unauthenticated_idle_timeout: Duration,
    /// Bytes of partly received requests held in memory, all connections together, beyond a
    /// small buffer each; a request needing more waits. A quarter is kept for connections that
    /// registered or used a session. At least twice --max-request-bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub request_memory_budget: usize,
    /// A name whose session was used this recently, or waits for mail now, is in use:
    /// registering it is refused unless the register asks to take it over (`register
    /// --takeover`). Legacy registers still replace it, as the original did.
    // Longer than the minute by which a busy session's last use is recorded.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub name_live_window: Duration,
    // Whether a legacy register with the static `auth_token = sha256(name:secret)` is
    // accepted in secret mode. On by default for the Python original's scripts; whoever sees
    // one such token can register as that name until the secret changes. Its flag says the
    // opposite (`serve --no-static-token`), so `serve` sets it rather than clap.
    #[arg(skip = true)]
    pub static_token_accepted: bool,
}

/// Registrations of new names per peer per minute when `rate_limit` is on and no other is set.
pub const DEFAULT_PEER_REGISTER_LIMIT: u32 = 60;
/// Registrations of new names per minute for everyone together, by the same rule.
pub const DEFAULT_REGISTER_LIMIT: u32 = 600;
/// The per-peer request limit is this many times the per-instance one unless set.
pub const PEER_RATE_FACTOR: u32 = 10;

impl Limits {
    /// Requests per 60 s per peer in force (0 = off).
    pub fn effective_peer_rate_limit(&self) -> u32 {
        self.peer_rate_limit
            .unwrap_or(self.rate_limit.saturating_mul(PEER_RATE_FACTOR))
    }

    /// New names per 60 s per peer in force (0 = off).
    pub fn effective_peer_register_limit(&self) -> u32 {
        self.peer_register_limit
            .unwrap_or(self.derived_from_rate_limit(DEFAULT_PEER_REGISTER_LIMIT))
    }

    /// New names per 60 s for everyone in force (0 = off).
    pub fn effective_register_limit(&self) -> u32 {
        self.register_limit
            .unwrap_or(self.derived_from_rate_limit(DEFAULT_REGISTER_LIMIT))
    }

    /// `--rate-limit 0` means "no request limits, for trusted scripts": the limits that
    /// were not set explicitly follow it.
    fn derived_from_rate_limit(&self, default: u32) -> u32 {
        if self.rate_limit == 0 {
            0
        } else {
            default
        }
    }
}

impl Default for Limits {
    /// The defaults of the `serve` flags, read through clap from the `default_value`s above:
    /// there is no second list of them to fall out of step.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct OnlyLimits {
            #[command(flatten)]
            limits: Limits,
        }
        <OnlyLimits as clap::Parser>::try_parse_from(["limits"])
            .expect("every limit's default parses")
            .limits
    }
}

/// How much longer than twice the clock skew the replay window must be. A stamped request is
/// accepted only while the broker's clock is within the skew of its stamp, so two accepted
/// copies of it arrive at most twice the skew apart; the window must still hold the first
/// copy's nonce when the last one comes. The margin covers millisecond rounding of stored
/// times and a broker whose skew check and nonce times read slightly different clocks.
pub const REPLAY_WINDOW_MARGIN: Duration = Duration::from_secs(30);

/// The most a `check` reply adds to one message besides its content and data: the ids,
/// names, times, a 128-character nonce fully escaped, the large-file fields and the reply's
/// own fields.
pub const MESSAGE_OVERHEAD_BYTES: usize = 2048;

/// A configuration that would break one of the broker's promises, refused before it starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--replay-window {window} is too short for --max-clock-skew {skew}: a replayed request can arrive up to twice the skew after the first, so the window must be longer than {minimum} (twice the skew plus {margin}). Pass --replay-window {suggested} or more, or a smaller --max-clock-skew")]
    ReplayWindowTooShort {
        window: String,
        skew: String,
        minimum: String,
        margin: String,
        suggested: String,
    },
}

impl Limits {
    /// Refuses limits that contradict each other: a replay window a replay can outlast.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let minimum = self.max_clock_skew * 2 + REPLAY_WINDOW_MARGIN;
        if self.replay_window <= minimum {
            let next_minute = (minimum.as_secs() / 60 + 1) * 60;
            return Err(ConfigError::ReplayWindowTooShort {
                window: duration_text(self.replay_window),
                skew: duration_text(self.max_clock_skew),
                minimum: duration_text(minimum),
                margin: duration_text(REPLAY_WINDOW_MARGIN),
                suggested: duration_text(Duration::from_secs(next_minute)),
            });
        }
        Ok(())
    }

    /// A warning for limits that let one message outgrow a legacy client's single read: a
    /// `check` always returns at least one message, however large. Not refused, because a
    /// user who raises `--large-message-bytes` may have no legacy clients.
    pub fn legacy_read_warning(&self) -> Option<String> {
        let most = crate::protocol::REPLY_BUDGET - MESSAGE_OVERHEAD_BYTES;
        let largest = self.large_message_bytes.saturating_add(self.max_data_bytes);
        (largest > most).then(|| {
            format!(
                "--large-message-bytes {} plus --max-data-bytes {} let one message outgrow the \
                 {}-byte reply a legacy client reads in one go; keep the two at most {most} \
                 bytes together if legacy clients use this broker",
                self.large_message_bytes,
                self.max_data_bytes,
                crate::protocol::REPLY_BUDGET
            )
        })
    }
}

impl Config {
    /// Refuses a configuration the broker cannot keep its promises under; `serve` and every
    /// start of a broker call it first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()
    }

    /// A config with the spec's defaults for `data_dir`, listening on `addr`.
    pub fn new(addr: SocketAddr, data_dir: PathBuf) -> Self {
        Config {
            addr,
            data_dir,
            socket: None,
            shared_secret: None,
            limits: Limits::default(),
            reset_secret: false,
            human: None,
        }
    }

    /// Where the broker keeps its data unless told otherwise: `~/.claude-ipc-data`.
    pub fn default_data_dir() -> PathBuf {
        crate::os::users::own_home().join(".claude-ipc-data")
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("ipc.db")
    }

    pub fn large_message_dir(&self) -> PathBuf {
        self.data_dir.join("large-messages")
    }
}

/// Parses a duration written as a number and a unit: `90s`, `10m`, `24h`, `7d`, or plain
/// seconds (`30`). Used by the `serve` flags.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it like 30s, 10m, 24h or 7d"))?;
    let seconds_per_unit = match unit {
        "" | "s" => 1,
        "ms" => return Ok(Duration::from_millis(number)),
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`; use ms, s, m, h or d"
            ))
        }
    };
    Ok(Duration::from_secs(number * seconds_per_unit))
}

/// A duration the way the `serve` flags take it: `11m`, `90s`, `250ms`, `1h`, `7d`.
pub fn duration_text(duration: Duration) -> String {
    let ms = duration.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let seconds = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds > 0 && seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limits_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
        assert!(Limits::default().replay_window > Limits::default().max_clock_skew * 2);
    }

    #[test]
    fn a_replay_window_not_longer_than_twice_the_skew_and_the_margin_is_refused() {
        let limits = |window_ms: u64, skew_s: u64| Limits {
            replay_window: Duration::from_millis(window_ms),
            max_clock_skew: Duration::from_secs(skew_s),
            ..Limits::default()
        };
        // The spec's own pair: the window is exactly twice the skew.
        let error = limits(600_000, 300).validate().unwrap_err();
        let text = error.to_string();
        assert!(text.contains("--replay-window 10m"), "{text}");
        assert!(text.contains("longer than 630s"), "{text}");
        assert!(text.contains("--replay-window 11m or more"), "{text}");
        // At the limit is still too short; a millisecond past it is enough.
        assert!(limits(50_000, 10).validate().is_err());
        assert_eq!(limits(50_001, 10).validate(), Ok(()));
    }

    #[test]
    fn limits_that_let_one_message_outgrow_a_legacy_read_are_warned_about() {
        assert_eq!(Limits::default().legacy_read_warning(), None);
        let limits = Limits {
            large_message_bytes: 64 * 1024,
            ..Limits::default()
        };
        let text = limits.legacy_read_warning().unwrap();
        assert!(text.contains("--large-message-bytes 65536"), "{text}");
    }

    #[test]
    fn durations_are_written_back_in_the_largest_whole_unit() {
        assert_eq!(duration_text(Duration::from_secs(660)), "11m");
        assert_eq!(duration_text(Duration::from_secs(630)), "630s");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_text(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(duration_text(Duration::ZERO), "0s");
    }

    /// `Limits` as `serve` reads it from a command line.
    fn limits_from(args: &[&str]) -> Result<Limits, clap::Error> {
        #[derive(clap::Parser)]
        struct OnlyLimits {
            #[command(flatten)]
            limits: Limits,
        }
        let line = std::iter::once("serve").chain(args.iter().copied());
        <OnlyLimits as clap::Parser>::try_parse_from(line).map(|parsed| parsed.limits)
    }

    #[test]
    fn history_is_kept_thirty_days_unless_told_otherwise() {
        assert_eq!(
            Limits::default().history_retention,
            Duration::from_secs(30 * 86_400)
        );
        let limits = limits_from(&["--history-retention", "90d"]).unwrap();
        assert_eq!(limits.history_retention, Duration::from_secs(90 * 86_400));
    }

    #[test]
    fn the_old_delivered_retention_flag_still_sets_the_history_retention_unlisted() {
        let limits = limits_from(&["--delivered-retention", "2h"]).unwrap();
        assert_eq!(limits.history_retention, Duration::from_secs(7200));
        let help = limits_from(&["--help"]).unwrap_err().to_string();
        assert!(help.contains("--history-retention"), "{help}");
        assert!(!help.contains("delivered-retention"), "{help}");
    }

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        assert!(parse_duration("soon").unwrap_err().contains("30s"));
        assert!(parse_duration("5w").unwrap_err().contains("unknown unit"));
    }
}
