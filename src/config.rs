//! Every window and limit the broker enforces, with the defaults from the product spec.
//!
//! `serve` builds a [`Config`] from its flags; tests build one directly and change a field.

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
}

/// The rules' windows and caps, and the per-connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A session unused for this long stops working.
    pub session_idle_expiry: Duration,
    /// Mail for a name nobody has registered is dropped after this long.
    pub future_mail_retention: Duration,
    /// Delivered mail (and its large-message file) is purged after this long.
    pub delivered_retention: Duration,
    /// After a rename the old name forwards to the new one for this long.
    pub forward_duration: Duration,
    /// The minimum time between two renames of one instance.
    pub rename_cooldown: Duration,
    /// Pending messages per recipient; 0 means unlimited.
    pub queue_cap: u32,
    /// Requests per 60 s per instance; 0 turns the limit off.
    pub rate_limit: u32,
    /// The largest request accepted, in bytes; the connection is closed after a larger one.
    pub max_request_bytes: usize,
    /// Content longer than this (in bytes, as JSON text) is stored in a file instead.
    pub large_message_bytes: usize,
    /// The largest `message.data` object accepted, in bytes of JSON.
    pub max_data_bytes: usize,
    /// A `send` nonce seen again within this window is a duplicate.
    pub replay_window: Duration,
    /// A `send` timestamp further than this from the broker's clock is refused.
    pub max_clock_skew: Duration,
    /// Simultaneous connections; the next one gets an error and is closed.
    pub max_connections: usize,
    /// A connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// A request that started arriving must be complete within this long.
    pub read_timeout: Duration,
    /// A reply the client does not read within this long closes the connection.
    pub write_timeout: Duration,
    /// How often the sweeper expires and purges old rows.
    pub sweep_interval: Duration,
    /// A connection none of whose requests has proved a session yet is closed after this long
    /// with no request (or `idle_timeout`, if that is shorter), so idle floods drain fast.
    pub unauthenticated_idle_timeout: Duration,
    /// Bytes that requests still arriving may hold in memory beyond each connection's small
    /// initial buffer, all connections together (a quarter kept for authenticated ones);
    /// never less than two largest requests.
    pub request_memory_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 60 * MINUTE;
        const DAY: u64 = 24 * HOUR;
        Limits {
            session_idle_expiry: Duration::from_secs(DAY),
            future_mail_retention: Duration::from_secs(7 * DAY),
            delivered_retention: Duration::from_secs(7 * DAY),
            forward_duration: Duration::from_secs(2 * HOUR),
            rename_cooldown: Duration::from_secs(HOUR),
            queue_cap: 100,
            rate_limit: 100,
            max_request_bytes: 1024 * 1024,
            large_message_bytes: 10 * 1024,
            max_data_bytes: 16 * 1024,
            replay_window: Duration::from_secs(10 * MINUTE),
            max_clock_skew: Duration::from_secs(5 * MINUTE),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(5 * MINUTE),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(MINUTE),
            unauthenticated_idle_timeout: Duration::from_secs(10),
            request_memory_budget: 64 * 1024 * 1024,
        }
    }
}

impl Config {
    /// A config with the spec's defaults for `data_dir`, listening on `addr`.
    pub fn new(addr: SocketAddr, data_dir: PathBuf) -> Self {
        Config {
            addr,
            data_dir,
            socket: None,
            shared_secret: None,
            limits: Limits::default(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
